"""A tiny dataset in the shared MMLU-Pro layout, made by the tests (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

TOPICS = {
    "math": ["Compute the integral of {a}x from 0 to {b}.", "Solve {a}x + {b} = 0 for x."],
    "history": ["In which year did the treaty of {a} end the war of {b}?", "Which empire ruled {a} in {b} AD?"],
    "biology": ["Which enzyme breaks down {a} in the cells of {b}?", "How many chromosomes does a {a} {b} have?"],
}
# Each model is right on its own topics; "cheap" is right on a third of everything; "last" lacks some answers.
SKILLS = {
    "math-pro": {"math"},
    "history-pro": {"history"},
    "bio-pro": {"biology"},
    "generalist": {"math", "history", "biology"},
    "cheap": set(),
    "last": {"math", "biology"},
}
PRICES = {"math-pro": 1.0, "history-pro": 1.0, "bio-pro": 1.0, "generalist": 4.0, "cheap": 0.1, "last": 0.5}


@pytest.fixture(scope="session")
def mmlu_like_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("mmlu_like")
    rows, responses = [], []
    qid = 0
    for category, templates in TOPICS.items():
        for i in range(40):
            text = templates[i % 2].format(a=rng.integers(2, 99), b=rng.integers(2, 99))
            rows.append(
                {
                    "question_id": qid,
                    "question": text,
                    "options": ["1", "2", "3", "4"],
                    "answer": "A",
                    "category": category,
                    "src": "fixture",
                }
            )
            for model, skills in SKILLS.items():
                if model == "last" and qid % 10 == 0:
                    continue  # not collected: must be dropped, never scored as wrong
                correct = category in skills or (model == "cheap" and qid % 3 == 0)
                responses.append(
                    {
                        "model": model,
                        "question_id": qid,
                        "response": "The answer is (A)." * (1 + i % 3),
                        "pred": "A",
                        "correct": int(correct),
                    }
                )
            qid += 1
    pl.DataFrame(rows).write_parquet(root / "questions.parquet")
    pl.DataFrame(responses).write_parquet(root / "responses.parquet")
    pl.DataFrame(
        {
            "model": list(PRICES),
            "provider_kind": "api",
            "params_b": None,
            "active_params_b": None,
            "usd_per_mtok": list(PRICES.values()),
        }
    ).write_csv(root / "models.csv")
    return root
