"""Save routers to a directory of plain files (``router.json`` + ``arrays.npz``) and load them back.

No pickle: the JSON names a router class from router_core (nothing else can be loaded) and its parameters;
the arrays hold the fitted state. A loaded router predicts bit-identically to the saved one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from router_core._errors import RouterInputError
from router_core.cluster_maps import ClusterMap, KMeansClusterMap, LearnedClusterMap
from router_core.routers import KNNRouter, RandomRouter, Router, UniRouter, ZeroRouter

__all__ = [
    "FORMAT_VERSION",
    "READABLE_FORMAT_VERSIONS",
    "load_cluster_map",
    "load_router",
    "save_cluster_map",
    "save_router",
]

#: 2: a UniRouter may carry features given for named LLMs (``UniRouter.use_features``); version 1 files load as
#: routers without them.
FORMAT_VERSION = 2
#: The versions :func:`load_router` reads.
READABLE_FORMAT_VERSIONS = (1, 2)
_ROUTERS: dict[str, type[Router]] = {c.__name__: c for c in (UniRouter, ZeroRouter, KNNRouter, RandomRouter)}
_MAPS: dict[str, type[ClusterMap]] = {c.__name__: c for c in (KMeansClusterMap, LearnedClusterMap)}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def save_router(router: Router, directory: str | os.PathLike[str]) -> Path:
    """Write ``router`` to ``directory`` (created if needed); returns the directory."""
    router._check_fitted()
    name = type(router).__name__
    if name not in _ROUTERS:
        raise RouterInputError("router", name, f"cannot be saved; savable routers: {sorted(_ROUTERS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"router.{k}": v for k, v in router.get_arrays().items()}
    arrays["costs"] = router.costs_
    arrays["validation_errors"] = router.validation_errors_
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "router": name,
        "params": router.get_params(),
        "llms": router.llms_,
        "embedding_dim": router.embedding_dim_,
        "validation_prompt_ids": None
        if router.validation_prompt_ids_ is None
        else [_plain(p) for p in router.validation_prompt_ids_],
    }
    if isinstance(router, UniRouter):
        cmap = router.cluster_map
        meta["cluster_map"] = {"class": type(cmap).__name__, "params": cmap.get_params()}
        arrays.update({f"cluster_map.{k}": v for k, v in cmap.get_arrays().items()})
    np.savez(directory / "arrays.npz", **arrays)
    (directory / "router.json").write_text(json.dumps(meta, indent=2))
    return directory


def save_cluster_map(cluster_map: ClusterMap, directory: str | os.PathLike[str]) -> Path:
    """Write a fitted cluster map to ``directory`` as ``cluster_map.json`` + ``cluster_map.npz``."""
    name = type(cluster_map).__name__
    if name not in _MAPS:
        raise RouterInputError("cluster_map", name, f"cannot be saved; savable maps: {sorted(_MAPS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "cluster_map.npz", **cluster_map.get_arrays())
    meta = {"format_version": FORMAT_VERSION, "class": name, "params": cluster_map.get_params()}
    (directory / "cluster_map.json").write_text(json.dumps(meta, indent=2))
    return directory


def _read(directory: str | os.PathLike[str], stem: str, arrays_name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON metadata ``<stem>.json`` and the arrays of ``arrays_name`` in ``directory``."""
    directory = Path(directory)
    meta_path = directory / f"{stem}.json"
    if not meta_path.exists():
        raise RouterInputError("directory", str(directory), f"has no {stem}.json")
    with np.load(directory / arrays_name, allow_pickle=False) as npz:
        return json.loads(meta_path.read_text()), {k: npz[k] for k in npz.files}


def load_cluster_map(directory: str | os.PathLike[str]) -> ClusterMap:
    """Load a cluster map written by :func:`save_cluster_map`."""
    meta, arrays = _read(directory, "cluster_map", "cluster_map.npz")
    if meta.get("class") not in _MAPS:
        raise RouterInputError("cluster_map", meta.get("class"), f"unknown cluster map; known: {sorted(_MAPS)}")
    return _MAPS[meta["class"]](**meta["params"]).set_arrays(arrays)


def load_router(directory: str | os.PathLike[str]) -> Router:
    """Load a router written by :func:`save_router`."""
    meta, arrays = _read(directory, "router", "arrays.npz")
    if meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
        version = meta.get("format_version")
        raise RouterInputError("format_version", version, f"expected one of {READABLE_FORMAT_VERSIONS}")
    if meta.get("router") not in _ROUTERS:
        raise RouterInputError("router", meta.get("router"), f"unknown router class; known: {sorted(_ROUTERS)}")
    cls = _ROUTERS[meta["router"]]
    if cls is UniRouter:
        spec = meta["cluster_map"]
        if spec["class"] not in _MAPS:
            raise RouterInputError("cluster_map", spec["class"], f"unknown cluster map; known: {sorted(_MAPS)}")
        cmap = _MAPS[spec["class"]](**spec["params"])
        cmap.set_arrays({k.removeprefix("cluster_map."): v for k, v in arrays.items() if k.startswith("cluster_map.")})
        router: Router = UniRouter(cmap, **meta["params"])
    else:
        router = cls(**meta["params"])
    router.set_arrays({k.removeprefix("router."): v for k, v in arrays.items() if k.startswith("router.")})
    router.validation_prompt_ids_ = meta["validation_prompt_ids"]
    router.llms_ = list(meta["llms"])
    router.embedding_dim_ = int(meta["embedding_dim"])
    router.costs_ = arrays["costs"]
    router.validation_errors_ = arrays["validation_errors"]
    router._pool_changed()
    return router
