"""The Dagster resources' defaults: where the embedder keeps its files under the data home."""

from __future__ import annotations

import shutil

from assets.resources import EmbedderResource
from router_core import Embedder


def test_the_embedders_files_go_to_embedders_and_those_made_under_onnx_are_still_read(
    tiny_model, static_cache, tmp_path, monkeypatch
):
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    for name in ("UNIROUTE_EMBEDDER_CACHE", "UNIROUTE_ONNX_CACHE"):
        monkeypatch.delenv(name, raising=False)
    resource = EmbedderResource(model=str(tiny_model), backend="static")
    assert resource.embedder().static_path.parent == tmp_path / "embedders"

    distilled = Embedder(str(tiny_model), backend="static", cache_dir=static_cache).static_path
    shutil.copytree(distilled, tmp_path / "onnx" / distilled.name)  # distilled before the rename
    assert resource.embedder().static_dir() == tmp_path / "onnx" / distilled.name
    assert not (tmp_path / "embedders").exists()  # nothing distilled again

    monkeypatch.setenv("UNIROUTE_ONNX_CACHE", str(tmp_path / "mine"))  # the old variable's name still works
    assert resource.embedder().static_path.parent == tmp_path / "onnx"
    assert EmbedderResource(model=str(tiny_model)).embedder().onnx_path.parent == tmp_path / "mine"
