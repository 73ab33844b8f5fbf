"""Errors raised by router_core: each names the bad field and the offending value."""

from __future__ import annotations

from typing import Any

__all__ = ["NotFittedError", "RouterInputError"]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RouterInputError(ValueError):
    """Bad input to router_core.

    Attributes
    ----------
    field : str
        The column, argument or attribute that was wrong (e.g. ``"score"``, ``"cost"``).
    value : object
        The offending value (or a short sample of offending values).
    """

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}={_short(value)}: {problem}")


class NotFittedError(RouterInputError):
    """A predict-time method was called before ``fit``."""

    def __init__(self, estimator: object) -> None:
        name = type(estimator).__name__
        super().__init__("estimator", name, f"{name} is not fitted yet; call fit() first")
