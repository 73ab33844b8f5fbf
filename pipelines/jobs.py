"""Jobs: what the sensor and the schedules launch."""

from __future__ import annotations

import dagster as dg

from assets.coverage import traffic_validation_prompts
from assets.profiling import graded_responses, llm_catalog, llm_responses

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
