"""Metadata the Dagster UI and the registry show: figures as Markdown images, frames as Markdown tables, and
fingerprints of the data a result was built from."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import dagster as dg
import polars as pl

#: Resolution of the figures drawn in the UI (sharp on a high-density screen; a deferral plot is ~60 kB).
IMAGE_DPI = 150


def markdown_image(figure, alt: str) -> dg.MetadataValue:
    """A matplotlib figure as an inline PNG in Markdown (the UI renders it; nothing to host)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=IMAGE_DPI, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def markdown_table(frame: pl.DataFrame, digits: int = 4) -> dg.MetadataValue:
    """A small frame as a Markdown table, floats rounded to ``digits``."""
    rounded = frame.with_columns(pl.col(pl.Float64, pl.Float32).round(digits))
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rounded.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))


def fingerprint(*parts: object) -> str:
    """A short content hash of ``parts`` (arrays as bytes): equal data, equal fingerprint."""
    encoded = json.dumps(
        parts, sort_keys=True, default=lambda v: v.tobytes().hex() if hasattr(v, "tobytes") else str(v)
    )
    return hashlib.sha256(encoded.encode()).hexdigest()[:12]
