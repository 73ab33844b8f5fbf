"""Coverage drift on four well-separated topics, where we know what the traffic did."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from router_core import (
    ClusterMap,
    CoverageReference,
    KMeansClusterMap,
    LearnedClusterMap,
    RouterInputError,
    cluster_weight_matrix,
    coverage_report,
    stratified_traffic_sample,
)

DIM, TOPICS = 16, 4
CENTRES = np.eye(DIM)  # topics 0-3 are the validation set's; 4 and up are topics it never saw


def _prompts(rng: np.random.Generator, topic: np.ndarray) -> np.ndarray:
    x = CENTRES[topic] + 0.08 * rng.normal(size=(len(topic), DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass
class World:
    cmap: ClusterMap
    validation: np.ndarray
    cluster_of_topic: np.ndarray  # the map's cluster for each validation topic
    reference: CoverageReference
    rng: np.random.Generator

    def traffic(self, shares: list[float], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings, cluster weights, topics) of ``n`` prompts drawn with the given topic shares."""
        topic = self.rng.choice(len(shares), size=n, p=shares)
        x = _prompts(self.rng, topic)
        return x, self.cmap.transform(x), topic


@pytest.fixture(params=["kmeans", "learned"])
def world(request) -> World:
    rng = np.random.default_rng(7)
    train_topic = rng.integers(0, TOPICS, size=400)
    train = _prompts(rng, train_topic)
    if request.param == "kmeans":
        cmap: ClusterMap = KMeansClusterMap(TOPICS, seed=0).fit(train)
    else:  # two LLMs with different strengths give the learned map something to learn
        errors = np.column_stack([train_topic % 2, train_topic < 2]).astype(float)
        cmap = LearnedClusterMap(TOPICS, seed=0).fit(train, errors)
    validation = _prompts(rng, np.repeat(np.arange(TOPICS), 100))
    weights = cmap.transform(validation)
    cluster_of_topic = np.array([weights[t * 100 : (t + 1) * 100].mean(0).argmax() for t in range(TOPICS)])
    assert sorted(cluster_of_topic) == list(range(TOPICS))  # one cluster per topic
    return World(cmap, validation, cluster_of_topic, CoverageReference.from_validation(weights, validation), rng)


def test_traffic_drawn_like_the_validation_set_has_not_drifted(world):
    x, w, _ = world.traffic([0.25] * 4, 3000)
    report = world.reference.report(w, x[:300])  # 10% of the traffic sampled (and embedded)
    assert report.total_variation < 0.05
    assert report.total_variation < 2 * report.null_total_variation < 0.1
    assert report.far_share < 0.04  # about 1% by construction of the threshold
    assert not report.drifted(bound=0.1)
    assert report.reason(bound=0.1).startswith("coverage holds: total variation")
    assert np.allclose(report.share_ratio, 1, atol=0.25)


def test_traffic_concentrated_on_one_topic_drifts_naming_its_cluster(world):
    x, w, _ = world.traffic([0.1, 0.1, 0.7, 0.1], 3000)
    report = world.reference.report(w, x[:300])
    cluster = world.cluster_of_topic[2]
    assert 0.4 < report.total_variation < 0.5  # 0.7 - 0.25 moved
    assert report.drifted(bound=0.1) and not report.drifted(bound=0.6)
    reason = report.reason(bound=0.1)
    assert reason.startswith("coverage drifted: total variation") and "far" not in reason
    assert f"cluster {cluster} has 70% of traffic vs 25% of validation" in reason
    assert report.share_ratio[cluster] == pytest.approx(2.8, abs=0.15)
    frame = report.to_frame()
    assert frame["traffic_share"].sum() == pytest.approx(1.0)
    assert frame.filter(frame["cluster"] == cluster)["traffic_share"][0] == pytest.approx(0.7, abs=0.03)


def test_traffic_far_from_every_cluster_drifts_even_with_unchanged_shares(world):
    x, w, _ = world.traffic([0.25] * 4, 2000)
    unseen = _prompts(world.rng, np.full(60, 9))  # a topic the validation set never saw: 60 of 300 sampled
    report = world.reference.report(w, np.vstack([x[:240], unseen]))
    assert report.far_share == pytest.approx(0.2, abs=0.02)
    assert report.far_by_cluster.sum() >= 60
    assert report.total_variation < 0.05
    assert report.drifted(bound=0.1)
    assert not report.drifted(bound=0.1, far_bound=0.25)
    reason = report.reason(bound=0.1)
    assert "of 300 sampled prompts are farther from every cluster than 99% of validation prompts" in reason
    assert "total variation" not in reason


def test_too_little_traffic_cannot_call_drift(world):
    x, w, _ = world.traffic([0.0, 0.0, 1.0, 0.0], 50)
    report = world.reference.report(w, x)
    assert report.total_variation > 0.7 and report.far_share is not None
    assert not report.drifted(bound=0.1)
    assert report.reason(bound=0.1) == "too little traffic to judge coverage: 50 decisions < 100"
    assert report.drifted(bound=0.1, min_prompts=50)


def test_far_share_is_not_measured_without_sampled_text(world):
    _, w, _ = world.traffic([0.25] * 4, 500)
    report = world.reference.report(w)
    assert report.far_share is None and report.n_embedded == 0
    assert "far prompts not measured" in report.reason(bound=0.1)
    assert report.summary()["far_share"] is None


def test_coverage_report_checks_its_inputs(world):
    weights = world.cmap.transform(world.validation)
    with pytest.raises(RouterInputError, match=r"^traffic_weights=\(3, 2\): expected 4 clusters"):
        coverage_report(weights, world.validation, np.full((3, 2), 0.5))
    with pytest.raises(RouterInputError, match=r"^traffic_weights=0\.5: row 1 does not sum to 1"):
        coverage_report(weights, world.validation, np.array([[1, 0, 0, 0], [0.5, 0, 0, 0]]))
    with pytest.raises(RouterInputError, match=r"^quantile=1\.0"):
        coverage_report(weights, world.validation, weights, quantile=1.0)
    with pytest.raises(RouterInputError, match=r"^bound=2"):
        world.reference.report(weights).drifted(bound=2)


# ---- the stratified sample -----------------------------------------------------------------------------------


def _stored(world: World, n: int = 1000, unseen: int = 40):
    """Stored traffic (70% topic 2) plus ``unseen`` far prompts; returns ids, weights, distances and the report."""
    x, w, _ = world.traffic([0.1, 0.1, 0.7, 0.1], n)
    x = np.vstack([x, _prompts(world.rng, np.full(unseen, 9))])
    w = np.vstack([w, world.cmap.transform(x[n:])])
    ids = [f"req-{i}" for i in range(len(x))]
    distances = world.reference.nearest(x)[0]
    return ids, w, distances, world.reference.report(w, x)


def test_sample_fills_the_under_covered_cluster_and_favours_far_prompts(world):
    ids, w, distances, report = _stored(world)
    sample = stratified_traffic_sample(ids, w, 100, report, distances, seed=3)
    assert sample.height == 100
    # validation 100 per cluster; 500 prompts at traffic shares would put ~350 in topic 2's cluster: all 100 go there
    assert set(sample["cluster"]) == {world.cluster_of_topic[2]}
    candidates = w.argmax(1) == world.cluster_of_topic[2]
    far_in_candidates = (distances[candidates] > report.far_threshold).mean()
    assert sample["far"].mean() > 3 * far_in_candidates
    assert sample["request_id"].to_list() == sorted(sample["request_id"].to_list(), key=ids.index)  # input order


def test_sample_is_deterministic_for_a_seed_whatever_the_row_order(world):
    ids, w, distances, report = _stored(world)
    first = stratified_traffic_sample(ids, w, 150, report, distances, seed=1)
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = stratified_traffic_sample([ids[i] for i in order], w[order], 150, report, distances[order], seed=1)
    other = stratified_traffic_sample(ids, w, 150, report, distances, seed=2)
    assert set(first["request_id"]) == set(shuffled["request_id"])
    assert set(first["request_id"]) != set(other["request_id"])


def test_a_cluster_with_too_few_candidates_passes_its_share_on(world):
    ids, w, distances, report = _stored(world)
    target = world.cluster_of_topic[2]
    keep = np.flatnonzero(w.argmax(1) != target)
    keep = np.r_[keep, np.flatnonzero(w.argmax(1) == target)[:30]]  # only 30 stored prompts of the hot cluster
    sample = stratified_traffic_sample([ids[i] for i in keep], w[keep], 100, report, distances[keep])
    counts = sample["cluster"].value_counts()
    assert sample.height == 100
    assert counts.filter(counts["cluster"] == target)["count"][0] == 30
    assert stratified_traffic_sample(ids[:5], w[:5], 100, report).height == 5  # fewer candidates than n: all of them


def test_sample_rejects_duplicate_ids(world):
    ids, w, _, report = _stored(world, n=9, unseen=1)
    with pytest.raises(RouterInputError, match=r"^request_id='req-0': duplicate request id"):
        stratified_traffic_sample(["req-0", *ids[1:9], "req-0"], w, 3, report)


def test_decision_weights_become_a_checked_matrix():
    column = pl.Series([[0.25, 0.75], [1.0, 0.0]], dtype=pl.List(pl.Float64))
    assert cluster_weight_matrix(column, 2).tolist() == [[0.25, 0.75], [1.0, 0.0]]
    assert cluster_weight_matrix(column.clear(), 2).shape == (0, 2)
    ids = pl.Series(["r1", "r2"])
    with pytest.raises(RouterInputError, match=r"^cluster_weights=-1: needs 2 weights \(request_id='r2'; -1: null"):
        cluster_weight_matrix(pl.Series([[1.0, 0.0], None], dtype=pl.List(pl.Float64)), 2, ids)
    with pytest.raises(RouterInputError, match=r"^cluster_weights=2: needs 3 weights \(row 0"):
        cluster_weight_matrix(column, 3)
