"""Sampled traffic as validation prompts: the ``traffic`` dataset, whose prompts are stored requests (their request
id as prompt id), sent as the client sent them and graded by an LLM judge, since no reference answer exists."""

from __future__ import annotations

import json

import duckdb
import polars as pl

import warehouse as wh
from profiling.datasets import DatasetSpec, write_prompt_set
from profiling.prompt_files import normalise_rows
from profiling.traffic_judging import TRAFFIC_RUBRIC

__all__ = [
    "TRAFFIC_DATASET",
    "add_traffic_prompts",
    "added_request_ids",
    "traffic_prompt_rows",
    "traffic_spec",
]

TRAFFIC_DATASET = "traffic"


def traffic_spec(judge: str) -> DatasetSpec:
    """The ``traffic`` dataset's spec: every prompt a validation prompt (its split assigned once, as any prompt's),
    the router text the one the gateway embedded, graded by ``judge`` (a catalog LLM) with the reference-free rubric
    that judges sampled traffic (:data:`profiling.traffic_judging.TRAFFIC_RUBRIC`)."""
    return DatasetSpec(
        router_text="field:router_prompt",
        grader="llm_judge",
        grader_options={"judge": judge, "rubric": TRAFFIC_RUBRIC},
        shares={"validation": 1.0},
    )


def _chat(messages: str | None) -> str | None:
    """``messages`` when it is a chat of text turns with a user turn (what a prompt can be sent as), else None."""
    try:
        turns = json.loads(messages) if messages else None
    except ValueError:
        return None
    plain = isinstance(turns, list) and all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str) for t in turns
    )
    return messages if plain and any(t["role"] == "user" for t in turns) else None


def traffic_prompt_rows(samples: pl.DataFrame) -> pl.DataFrame:
    """Prompt-file rows of sampled requests (``request_id, prompt, messages``): the request id as prompt id, the
    request's messages as sent (its prompt alone when they are not plain text turns), the router's text as
    ``router_prompt``."""
    return pl.DataFrame(
        {
            "prompt_id": samples["request_id"],
            "prompt": samples["prompt"],
            "messages": [_chat(m) for m in samples["messages"]],
            "router_prompt": samples["prompt"],
        },
        schema={"prompt_id": pl.String, "prompt": pl.String, "messages": pl.String, "router_prompt": pl.String},
    )


def added_request_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The request ids of the sampled requests stored as ``traffic`` prompts already."""
    prompt_ids = wh.read_prompts(con, dataset=TRAFFIC_DATASET)["prompt_id"]
    return prompt_ids.str.strip_prefix(f"{TRAFFIC_DATASET}/").to_list()


def add_traffic_prompts(con: duckdb.DuckDBPyConnection, samples: pl.DataFrame, judge: str) -> pl.DataFrame:
    """Store sampled requests (``request_id, prompt, messages``) as new validation prompts of the ``traffic``
    dataset, graded by ``judge``; requests stored as prompts already are left as they are (never added twice).
    Returns the prompts stored now."""
    new = samples.filter(~pl.col("request_id").is_in(added_request_ids(con)))
    if new.height == 0:
        return wh.read_prompts(con, dataset=TRAFFIC_DATASET).head(0)
    rows = normalise_rows(traffic_prompt_rows(new), "traffic_samples")
    return write_prompt_set(con, TRAFFIC_DATASET, rows, traffic_spec(judge), source="traffic_samples")
