"""Stable pseudo-random numbers keyed by ids: the same id and salt give the same number on any machine."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from router_core._errors import RouterInputError

__all__ = ["unit_hash"]


def unit_hash(ids: Sequence[object], salt: str) -> np.ndarray:
    """(n,) numbers uniform in [0, 1), one per id, from blake2b of ``salt`` and the id's text.

    Unlike Python's ``hash`` (salted per process) or a shuffled order (changes when rows are added), an id keeps its
    number across runs, processes and row orders.

    >>> unit_hash(["a", "b"], "s").tolist() == unit_hash(["b", "a"], "s").tolist()[::-1]
    True
    """
    out = np.empty(len(ids), dtype=np.float64)
    for i, key in enumerate(ids):
        if key is None:
            raise RouterInputError("request_id", None, f"row {i} has a null id")
        digest = hashlib.blake2b(f"{salt}\x1f{key}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out
