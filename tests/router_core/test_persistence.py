from __future__ import annotations

import json

import numpy as np
import pytest

from router_core import (
    KMeansClusterMap,
    KNNRouter,
    LearnedClusterMap,
    OracleRouter,
    RouterInputError,
    UniRouter,
    load_router,
    save_router,
)


def _routers(data):
    val = (data.validation, data.error_matrix("validation"), data.llms, data.costs)
    yield UniRouter(KMeansClusterMap(2, temperature=0.5).fit(data.train), shrinkage=2.0).fit_arrays(*val)
    yield UniRouter(LearnedClusterMap(3).fit(data.train, data.error_matrix("train"))).fit_arrays(*val)
    yield KNNRouter(7).fit_arrays(*val)


def test_round_trip_is_bit_identical_and_keeps_growing(two_topics, tmp_path):
    for i, router in enumerate(_routers(two_topics)):
        loaded = load_router(save_router(router, tmp_path / str(i)))
        assert type(loaded) is type(router)
        assert loaded.llms_ == router.llms_
        assert np.array_equal(loaded.predict_error(two_topics.test), router.predict_error(two_topics.test))
        d_errors = two_topics.errors(two_topics.validation_topic, "D")
        for r in (router, loaded):
            r.add_llm("D", d_errors, cost=0.5)
        assert np.array_equal(loaded.route(two_topics.test, 0.1), router.route(two_topics.test, 0.1))


def test_saved_files_are_plain_json_and_npz(two_topics, tmp_path):
    router = next(_routers(two_topics))
    save_router(router, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz", "router.json"]
    meta = json.loads((tmp_path / "router.json").read_text())
    assert meta["router"] == "UniRouter" and meta["cluster_map"]["class"] == "KMeansClusterMap"


def test_load_refuses_unknown_classes(two_topics, tmp_path):
    save_router(next(_routers(two_topics)), tmp_path)
    meta = json.loads((tmp_path / "router.json").read_text())
    meta["router"] = "os.system"
    (tmp_path / "router.json").write_text(json.dumps(meta))
    with pytest.raises(RouterInputError, match=r"router=.*os\.system"):
        load_router(tmp_path)


def test_oracle_is_not_savable(two_topics, tmp_path):
    oracle = OracleRouter().fit_arrays(
        two_topics.test, two_topics.error_matrix("test"), two_topics.llms, two_topics.costs
    )
    with pytest.raises(RouterInputError, match="OracleRouter"):
        save_router(oracle, tmp_path)


def test_features_given_for_an_llm_are_saved_and_old_files_still_load(two_topics, tmp_path):
    router = next(_routers(two_topics))
    save_router(router, tmp_path / "old")  # no features: what version 1 wrote, but for the version number
    meta = json.loads((tmp_path / "old" / "router.json").read_text())
    (tmp_path / "old" / "router.json").write_text(json.dumps(meta | {"format_version": 1}))
    old = load_router(tmp_path / "old")
    assert np.array_equal(old.psi_, router.psi_) and old.features_ == {}
    router.use_features({"B": np.array([0.3, 0.4])})
    loaded = load_router(save_router(router, tmp_path / "new"))
    assert np.array_equal(loaded.psi_, router.psi_) and np.array_equal(loaded.psi_[1], [0.3, 0.4])
    assert np.array_equal(loaded.predict_error(two_topics.test), router.predict_error(two_topics.test))
    (tmp_path / "new" / "router.json").write_text(json.dumps(meta | {"format_version": 3}))
    with pytest.raises(RouterInputError, match=r"format_version=3: expected one of \(1, 2\)"):
        load_router(tmp_path / "new")
