"""The gateway's decision log in the warehouse: every routed request, loaded from the files the gateway writes."""

# Dagster resolves config and resource types from annotations at import: no `from __future__ import annotations`.
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

import warehouse as wh
from assets.metadata import markdown_image
from assets.resources import WarehouseResource
from serving import decisions
from serving.recordlog import move_to_loaded

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: a Dagster run starts ~0.5 s sooner
    from matplotlib.figure import Figure

GROUP = "serving"
PLOT_DAYS = 30  # the plots show the last 30 days of requests


class DecisionsConfig(dg.Config):
    """Where the gateway's decision files are (empty: ``<warehouse dir>/decisions``), and whether files once loaded
    are moved to its ``loaded/`` folder (kept there, never deleted; the next run reads only new files)."""

    directory: str = ""
    move_loaded: bool = True


@dg.asset(group_name=GROUP, pool="duckdb")
def routing_decisions(config: DecisionsConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every routed request the gateway logged, loaded into ``routing_decisions`` (requests already loaded are
    kept: loading again stores nothing new); plots of realised cost against the budget asked, and the LLM mix."""
    directory = config.directory or str(decisions.default_directory())
    files = decisions.decision_files(directory)  # finished files only: the log renames each into place whole
    frame = decisions.read_decision_files(files)
    with warehouse.connect() as con:
        loaded = wh.insert_routing_decisions(con, frame)
        total = wh.count_routing_decisions(con)
        recent = wh.read_routing_decisions(con, since=datetime.now(UTC) - timedelta(days=PLOT_DAYS))
    if config.move_loaded:  # only once their rows are committed: a crash before this reloads them (no-op)
        move_to_loaded(files)
    figures = {"cost_vs_budget": _cost_vs_budget(recent), "llm_mix_per_day": _llm_mix_per_day(recent)}
    return dg.MaterializeResult(
        metadata={
            "rows_loaded": loaded,
            "rows_total": total,
            "files": len(files),
            "files_moved_to_loaded": len(files) if config.move_loaded else 0,
            "directory": directory,
            f"over_budget_last_{PLOT_DAYS}_days": _over_budget(recent),
            **{name: markdown_image(figure, name) for name, figure in figures.items()},
        }
    )


def _budgeted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(
        (pl.col("budget_kind") == "max_cost_per_query")
        & pl.col("budget_value").is_not_null()
        & pl.col("realised_cost_usd").is_not_null()
    )


def _over_budget(frame: pl.DataFrame) -> int:
    """Requests with a max_cost_per_query whose realised cost went over it (the budget bounds predicted cost)."""
    return _budgeted(frame).filter(pl.col("realised_cost_usd") > pl.col("budget_value")).height


def _cost_vs_budget(frame: pl.DataFrame) -> "Figure":
    """Realised cost per query against the max_cost_per_query asked; points above the diagonal went over."""
    from matplotlib.figure import Figure

    data = _budgeted(frame)
    figure = Figure(figsize=(5, 4))
    ax = figure.subplots()
    if data.height:
        budget, cost = data["budget_value"].to_numpy(), data["realised_cost_usd"].to_numpy()
        ax.scatter(budget, cost, s=8, alpha=0.5)
        top = float(max(budget.max(), cost.max())) or 1.0
        ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="cost = budget")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no request with max_cost_per_query yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("max_cost_per_query asked (USD)")
    ax.set_ylabel("realised cost (USD)")
    ax.set_title(f"Realised cost against budget, last {PLOT_DAYS} days")
    return figure


def _llm_mix_per_day(frame: pl.DataFrame) -> "Figure":
    """Requests per day, stacked by the LLM that answered ("none": every attempt failed)."""
    counts = (
        frame.with_columns(pl.col("decided_at").dt.date().alias("day"), pl.col("chosen_llm").fill_null("none"))
        .group_by("day", "chosen_llm")
        .len()
        .sort("day", "chosen_llm")
    )
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5, 0.3 * counts["day"].n_unique()), 4))
    ax = figure.subplots()
    if counts.height:
        table = counts.pivot(on="chosen_llm", index="day", values="len").fill_null(0).sort("day")
        days = [str(d) for d in table["day"]]
        bottom = [0] * len(days)
        for llm in sorted(c for c in table.columns if c != "day"):
            heights = table[llm].to_list()
            ax.bar(days, heights, bottom=bottom, label=llm)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
        ax.tick_params(axis="x", labelrotation=45)
    else:
        ax.text(0.5, 0.5, "no routed request yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("day (UTC)")
    ax.set_ylabel("requests")
    ax.set_title(f"LLM mix per day, last {PLOT_DAYS} days")
    return figure
