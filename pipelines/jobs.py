"""Jobs: what the sensor and the schedules launch."""

from __future__ import annotations

import dagster as dg

from assets.decisions import routing_decisions
from assets.outcomes import online_evaluation, traffic_outcomes
from assets.profiling import graded_responses, llm_catalog, llm_responses
from assets.traffic import traffic_feedback, traffic_samples

#: Profile one LLM (one partition): sync the catalog, collect its missing answers, grade them.
profile_llm_job = dg.define_asset_job(
    "profile_llm",
    selection=dg.AssetSelection.assets(llm_catalog, llm_responses, graded_responses),
    description="Sync the catalog, then collect and grade one LLM's missing answers.",
)

#: The traffic loop: load the gateway's decisions, ratings and sampled traffic (expiring sampled text past its
#: retention), then outcomes and the online evaluation; each LLM's ``llm_traffic_evaluation`` follows by automation.
traffic_loop_job = dg.define_asset_job(
    "traffic_loop",
    selection=dg.AssetSelection.assets(
        routing_decisions, traffic_feedback, traffic_samples, traffic_outcomes, online_evaluation
    ),
    description="Load decisions, feedback and sampled traffic (retention applied), then outcomes and the online "
    "evaluation of the champion's traffic.",
)
