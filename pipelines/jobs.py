"""Jobs: what the sensor and the schedules launch."""

from __future__ import annotations

import dagster as dg

from assets.coverage import traffic_coverage, traffic_validation_prompts
from assets.decisions import routing_decisions
from assets.outcomes import online_evaluation, traffic_outcomes
from assets.profiling import graded_responses, llm_catalog, llm_responses
from assets.rechecks import drift_rechecks
from assets.traffic import traffic_feedback, traffic_samples

#: Profile one LLM (one partition): sync the catalog, collect its missing answers, grade them.
profile_llm_job = dg.define_asset_job(
    "profile_llm",
    selection=dg.AssetSelection.assets(llm_catalog, llm_responses, graded_responses),
    description="Sync the catalog, then collect and grade one LLM's missing answers.",
)

#: Add the stored traffic prompts a drifted coverage report proposes to the validation set (the coverage sensor).
add_traffic_prompts_job = dg.define_asset_job(
    "add_traffic_prompts",
    selection=dg.AssetSelection.assets(traffic_validation_prompts),
    description="Add sampled traffic prompts to the validation set as prompts of the traffic dataset.",
)

#: The traffic loop: load the gateway's decisions, ratings and sampled traffic (expiring sampled text past its
#: retention), then outcomes, the online evaluation and coverage (whose drifted reports the coverage sensor acts on);
#: each LLM's ``llm_traffic_evaluation`` follows by automation.
traffic_loop_job = dg.define_asset_job(
    "traffic_loop",
    selection=dg.AssetSelection.assets(
        routing_decisions, traffic_feedback, traffic_samples, traffic_outcomes, online_evaluation, traffic_coverage
    ),
    description="Load decisions, feedback and sampled traffic (retention applied), then outcomes, the online "
    "evaluation and the coverage of the champion's traffic.",
)

#: Confirm the drifts the online evaluation suspects by asking the LLMs again (pays for answers, at most
#: ``drift_rechecks.config.budget_usd`` a run); each LLM's traffic check follows by automation.
drift_recheck_job = dg.define_asset_job(
    "drift_recheck",
    selection=dg.AssetSelection.assets(drift_rechecks),
    description="Ask suspect LLMs again some stored prompts of their suspect clusters; confirm or clear the drift.",
)

#: One LLM's grades and their checks again (one partition), after a confirmed drift replaced some of its answers:
#: its features, then the router, follow by automation (``drift_confirmed_sensor``).
refresh_grades_job = dg.define_asset_job(
    "refresh_llm_grades",
    selection=dg.AssetSelection.assets(graded_responses),
    description="Grade one LLM's answers not graded yet and check them again, so that its features follow.",
)
