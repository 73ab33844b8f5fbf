"""Synthetic fixtures where the right routing is known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest


@dataclass
class TwoTopics:
    """Two topics as tight clusters of unit vectors; A is right on topic 0, B on topic 1, C (cheap) on half.

    Rows: ``train`` / ``validation`` / ``test`` prompts, each with its topic in ``*_topic``.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    train_topic: np.ndarray
    validation_topic: np.ndarray
    test_topic: np.ndarray
    llms: list[str]
    costs: list[float]

    def errors(self, topic: np.ndarray, llm: str, seed: int = 0) -> np.ndarray:
        """A: wrong on topic 1; B: wrong on topic 0; C: wrong on a random half; D: never wrong."""
        rng = np.random.default_rng(seed)
        return {
            "A": (topic == 1).astype(float),
            "B": (topic == 0).astype(float),
            "C": (rng.uniform(size=topic.shape) < 0.5).astype(float),
            "D": np.zeros(topic.shape),
        }[llm]

    def error_matrix(self, split: str, llms: list[str] | None = None) -> np.ndarray:
        topic = getattr(self, f"{split}_topic")
        return np.column_stack([self.errors(topic, m) for m in (llms or self.llms)])

    def outcomes(self, split: str, llms: list[str] | None = None) -> pl.DataFrame:
        """``model, prompt_id, score`` frame; prompt ids are ``<split>-<row>``."""
        topic = getattr(self, f"{split}_topic")
        ids = [f"{split}-{i}" for i in range(len(topic))]
        return pl.concat(
            pl.DataFrame({"model": m, "prompt_id": ids, "score": 1.0 - self.errors(topic, m)})
            for m in (llms or self.llms)
        )

    def llm_frame(self) -> pl.DataFrame:
        return pl.DataFrame({"model": self.llms, "cost": self.costs})


def _blobs(rng: np.random.Generator, n: int, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    topic = rng.integers(0, len(centers), size=n)
    x = centers[topic] + 0.05 * rng.normal(size=(n, centers.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), topic


@pytest.fixture
def two_topics() -> TwoTopics:
    rng = np.random.default_rng(42)
    centers = np.eye(8)[:2]
    parts = [_blobs(rng, n, centers) for n in (200, 60, 100)]
    return TwoTopics(
        train=parts[0][0],
        validation=parts[1][0],
        test=parts[2][0],
        train_topic=parts[0][1],
        validation_topic=parts[1][1],
        test_topic=parts[2][1],
        llms=["A", "B", "C"],
        costs=[1.0, 1.0, 0.1],
    )
