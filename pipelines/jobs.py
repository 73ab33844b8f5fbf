"""Jobs: what the sensor and the schedules launch."""

from __future__ import annotations

import dagster as dg

from assets.profiling import graded_responses, llm_catalog, llm_responses

#: Profile one LLM (one partition): sync the catalog, collect its missing answers, grade them.
profile_llm_job = dg.define_asset_job(
    "profile_llm",
    selection=dg.AssetSelection.assets(llm_catalog, llm_responses, graded_responses),
    description="Sync the catalog, then collect and grade one LLM's missing answers.",
)
