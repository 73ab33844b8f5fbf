"""Metadata the Dagster UI shows: figures as Markdown images, small frames as Markdown tables."""

from __future__ import annotations

import base64
import io

import dagster as dg
import polars as pl


def markdown_image(figure, alt: str) -> dg.MetadataValue:
    """A matplotlib figure as an inline PNG in Markdown (the UI renders it; nothing to host)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def markdown_table(frame: pl.DataFrame, digits: int = 4) -> dg.MetadataValue:
    """A small frame as a Markdown table, floats rounded to ``digits``."""
    rounded = frame.with_columns(pl.col(pl.Float64, pl.Float32).round(digits))
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rounded.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))
