"""Figures of a router's evaluation: deferral curves with single LLMs as labelled points, and the Psi heatmap; and
of its online evaluation on traffic (:mod:`router_core.online`): reliability, quality vs cost, drift per cluster;
of a rollout (:mod:`router_core.rollout`): champion vs challenger; and cluster shares of traffic against the
validation set (:mod:`router_core.coverage`).

Matplotlib is imported on first use (Agg backend), never with router_core.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from router_core.evaluation import _hull_arrays
from router_core.scoring import PoolFit

__all__ = [
    "plot_coverage",
    "plot_deferral_curves",
    "plot_drift_heatmap",
    "plot_psi_heatmap",
    "plot_quality_vs_cost",
    "plot_reliability",
    "plot_rollout",
    "version_figures",
]


def plot_deferral_curves(
    curves: Mapping[str, pl.DataFrame],
    single_llms: pl.DataFrame | None = None,
    cost_range: tuple[float, float] | None = None,
    title: str = "Deferral curves",
    cost_label: str = "average cost per prompt",
):
    """Figure of each router's hulled deferral curve, with single LLMs as points (``cost, accuracy``, and
    ``model`` to label each point with its name). The axes leave a margin around ``cost_range`` so that the
    points at its ends are drawn whole."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    right = cost_range[1] if cost_range else None
    for name, curve in curves.items():
        xs, ys = _hull_arrays(curve)
        if right is not None and xs[-1] < right:
            xs, ys = np.append(xs, right), np.append(ys, ys[-1])
        ax.plot(xs, ys, label=name, linewidth=1.6)
    log_scale = bool(cost_range and cost_range[0] > 0 and cost_range[1] / cost_range[0] > 10)
    if log_scale:
        ax.set_xscale("log")  # list prices span orders of magnitude
    if cost_range:
        low, high = map(float, cost_range)
        if log_scale:
            ax.set_xlim(low / 1.25, high * 1.25)
        else:
            pad = 0.05 * ((high - low) or abs(high) or 1.0)
            ax.set_xlim(low - pad, high + pad)
    if single_llms is not None:
        ax.scatter(single_llms["cost"], single_llms["accuracy"], s=14, c="black", zorder=3, label="single LLMs")
        if "model" in single_llms.columns:
            _label_points(ax, single_llms)
    _dollar_ticks(ax)
    ax.set_xlabel(cost_label)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _spread_labels(ax)
    return fig


def _pyplot():
    """matplotlib.pyplot with the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dollar_ticks(ax, most: int = 6) -> None:
    """Cost ticks as plain dollars (``$0.002``, never ``10^-3`` or an offset), at most ``most`` labelled and no
    minor tick labels: on a log axis 1-2-5 steps, thinned to whole decades (then every other one) when crowded."""
    from matplotlib import ticker

    low, high = ax.get_xlim()
    if ax.get_xscale() == "log":
        decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        ticks = [m * 10.0**d for d in decades for m in (1, 2, 5)]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) > most:
            ticks = [t for t in ticks if np.isclose(np.log10(t), round(np.log10(t)))]
        while len(ticks) > most:
            ticks = ticks[::2]
        ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=most - 1))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _dollars(v)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _dollars(value: float) -> str:
    """``$`` and the value in plain decimals, 3 significant digits at most."""
    text = np.format_float_positional(abs(value), precision=3, unique=True, fractional=False, trim="-")
    return f"{'-' if value < 0 else ''}${text}"


def _spread_labels(ax, gap: float = 1.0) -> None:
    """Nudge the point labels of ``ax`` apart vertically so that no two overlap: bottom to top, each label that
    overlaps one below it moves up just above it; then, if the highest left the axes, top to bottom back inside
    (``gap``: points between labels)."""
    texts = [t for t in ax.texts if t.get_text() and hasattr(t, "xyann")]  # the annotations of points
    if len(texts) < 2:
        return
    renderer = ax.figure.canvas.get_renderer()
    to_points = 72 / ax.figure.dpi
    boxes = {id(t): t.get_window_extent(renderer) for t in texts}

    def shift(text, pixels: float) -> None:
        dx, dy = text.xyann
        text.xyann = (dx, dy + pixels * to_points)
        boxes[id(text)] = boxes[id(text)].translated(0, pixels)

    def overlap_x(a, b) -> bool:
        return a.x0 < b.x1 and b.x0 < a.x1

    pad = gap / to_points
    placed: list = []
    for text in sorted(texts, key=lambda t: boxes[id(t)].y0):
        below = [boxes[id(p)].y1 for p in placed if overlap_x(boxes[id(p)], boxes[id(text)])]
        if below and boxes[id(text)].y0 < max(below) + pad:
            shift(text, max(below) + pad - boxes[id(text)].y0)
        placed.append(text)
    top = ax.get_window_extent(renderer).y1
    placed.clear()
    for text in sorted(texts, key=lambda t: -boxes[id(t)].y1):
        above = [boxes[id(p)].y0 for p in placed if overlap_x(boxes[id(p)], boxes[id(text)])]
        ceiling = min([top, *(y - pad for y in above)])
        if boxes[id(text)].y1 > ceiling:
            shift(text, ceiling - boxes[id(text)].y1)
        placed.append(text)


def _label_points(ax, points: pl.DataFrame) -> None:
    """Each point's ``model`` beside it, on the side facing the middle of the axes so that no name leaves them."""
    left, right = ax.get_xlim()
    scale = np.log10 if ax.get_xscale() == "log" else (lambda v: v)
    middle = (scale(left) + scale(right)) / 2
    for model, cost, accuracy in points.select("model", "cost", "accuracy").iter_rows():
        towards_left = scale(cost) > middle
        ax.annotate(
            str(model),
            (cost, accuracy),
            xytext=(-5 if towards_left else 5, 3),
            textcoords="offset points",
            ha="right" if towards_left else "left",
            fontsize=7,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
        )


def plot_psi_heatmap(psi: np.ndarray, llms: Sequence[str]):
    """Figure of the LLM feature table Psi: one row per LLM, one column per cluster, colour = error."""
    fig, ax = _pyplot().subplots(figsize=(8, 0.35 * len(llms) + 1.5))
    image = ax.imshow(psi, aspect="auto", cmap="magma_r", vmin=0, vmax=1)
    ax.set_yticks(range(len(llms)), list(llms), fontsize=7)
    ax.set_xlabel("cluster")
    ax.set_title("Psi: validation error per cluster")
    fig.colorbar(image, ax=ax, label="error")
    fig.tight_layout()
    return fig


def version_figures(fit: PoolFit) -> dict:
    """A fitted pool's figures by file name: its test deferral curves (UniRoute, ZeroRouter, each LLM alone) and
    its Psi heatmap."""
    s, pool = fit.scores, fit.pool
    spread = s.llm_cost.max() > s.llm_cost.min()
    return {
        "deferral_curve.png": plot_deferral_curves(
            {"UniRoute": s.curve, "ZeroRouter (prompt-blind)": s.zero_curve},
            single_llms=pl.DataFrame({"model": pool, "cost": s.llm_cost, "accuracy": s.llm_acc}),
            cost_range=(s.llm_cost.min(), s.llm_cost.max()) if spread else None,
            title=f"Deferral curves on {len(fit.test_ids):,} test prompts",
            cost_label="average cost per prompt (USD)",
        ),
        "psi_heatmap.png": plot_psi_heatmap(fit.router.psi_, fit.router.llms_),
    }


def _error_bars(y: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lengths below and above ``y`` of its interval [low, high], never negative: a Wilson interval of a rate of
    0 or 1 ends at it, up to rounding (``matplotlib`` refuses a negative error bar)."""
    return np.maximum(y - low, 0.0), np.maximum(high - y, 0.0)


def plot_reliability(table: pl.DataFrame):
    """Reliability figure of :func:`router_core.online.calibration`'s table: mean predicted error vs observed
    error per bin with its interval (marker area ~ count); a calibrated router sits on the diagonal."""
    fig, ax = _pyplot().subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    x, y = table["predicted_error"].to_numpy(), table["observed_error"].to_numpy()
    below, above = _error_bars(y, table["observed_low"].to_numpy(), table["observed_high"].to_numpy())
    ax.errorbar(x, y, yerr=[below, above], fmt="none", ecolor="black", elinewidth=1, capsize=2)
    counts = table["count"].to_numpy()
    ax.scatter(x, y, s=20 + 180 * counts / max(counts.max(initial=0), 1), zorder=3, label="traffic (area ~ requests)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted error")
    ax.set_ylabel("observed error on traffic")
    ax.set_title(f"Calibration on {int(counts.sum()):,} rated requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_quality_vs_cost(table: pl.DataFrame):
    """Each LLM's observed score on traffic (with its interval) vs its mean realised cost, from
    :func:`router_core.online.quality_vs_cost`; LLMs without rated requests are left out, and those without a
    realised cost (no prices in the catalog) are named under the plot instead of placed on it."""
    rated = table.filter(pl.col("rated") > 0)
    known = pl.col("mean_cost_usd").is_not_null() & pl.col("mean_cost_usd").is_finite()
    unpriced, rated = rated.filter(~known)["llm"].to_list(), rated.filter(known)
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    if unpriced:
        fig.text(0.01, 0.01, "no realised cost: " + ", ".join(map(str, unpriced)), fontsize=7)
    cost, score = rated["mean_cost_usd"].to_numpy(), rated["observed_score"].to_numpy()
    below, above = _error_bars(score, rated["score_low"].to_numpy(), rated["score_high"].to_numpy())
    ax.errorbar(cost, score, yerr=[below, above], fmt="o", color="black", markersize=4, capsize=2)
    positive = cost[cost > 0]
    if positive.size > 1 and positive.max() / positive.min() > 10:
        ax.set_xscale("log")
    _label_points(ax, rated.select(model="llm", cost="mean_cost_usd", accuracy="observed_score"))
    _dollar_ticks(ax)
    ax.set_xlabel("mean realised cost per request (USD)")
    ax.set_ylabel("observed score on traffic")
    ax.set_title(f"Quality vs cost on {int(rated['rated'].sum()):,} rated requests")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _spread_labels(ax)
    return fig


def plot_drift_heatmap(table: pl.DataFrame, min_count: int = 30, z: float = 3.0):
    """Per LLM (rows) and cluster (columns) of :func:`router_core.online.online_evaluation`'s ``by_cluster``:
    colour = z (observed error above predicted, in standard errors), each cell labelled with its request count;
    cells under ``min_count`` requests left blank, cells past ``z`` outlined."""
    llms = sorted(table["llm"].unique().to_list()) or ["(no rated traffic)"]
    k = int(table["cluster"].max()) + 1 if table.height else 1
    scores = np.full((len(llms), k), np.nan)
    fig, ax = _pyplot().subplots(figsize=(min(max(2.5 + 0.5 * k, 6), 16), 0.4 * len(llms) + 1.6))
    for llm, cluster, count, value in table.select("llm", "cluster", "count", "z").iter_rows():
        row = llms.index(llm)
        if count >= min_count:
            scores[row, cluster] = value
            if value > z:
                ax.add_patch(_pyplot().Rectangle((cluster - 0.5, row - 0.5), 1, 1, fill=False, linewidth=2))
    limit = max(z + 1, float(np.nanmax(np.abs(scores))) if np.isfinite(scores).any() else 0.0)
    for llm, cluster, count, value in table.select("llm", "cluster", "count", "z").iter_rows():
        dark = count >= min_count and abs(value) > 0.6 * limit  # white text on the darkest colours
        ax.text(
            cluster,
            llms.index(llm),
            str(count),
            ha="center",
            va="center",
            fontsize=6,
            color="white" if dark else "black",
        )
    image = ax.imshow(scores, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_yticks(range(len(llms)), llms, fontsize=7)
    ax.set_xticks(range(k))
    ax.set_xlabel("cluster (cell text: rated requests)")
    ax.set_title(f"Observed minus predicted error, in SEs (outlined: > {z:g})", fontsize=10)
    fig.colorbar(image, ax=ax, label="z")
    fig.tight_layout()
    return fig


def plot_coverage(table: pl.DataFrame, title: str = "Cluster shares: traffic vs validation"):
    """Each cluster's share of the validation set and of traffic, side by side, from
    :meth:`router_core.coverage.CoverageReport.to_frame`; far traffic prompts counted above the traffic bars."""
    fig, ax = _pyplot().subplots(figsize=(min(max(4 + 0.5 * table.height, 6), 16), 4))
    k = table["cluster"].to_numpy()
    ax.bar(k - 0.2, table["validation_share"].to_numpy(), width=0.4, label="validation set", color="grey")
    traffic = table["traffic_share"].to_numpy()
    ax.bar(k + 0.2, traffic, width=0.4, label="traffic", color="tab:blue")
    for cluster, share, far in zip(k, traffic, table["far_prompts"].to_list(), strict=True):
        if far:
            ax.text(cluster + 0.2, share, f"{far} far", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(k)
    ax.set_xlabel("cluster")
    ax.set_ylabel("share")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


#: The panels of :func:`plot_rollout`: (metric of :func:`router_core.rollout.rollout_comparison`, axis label).
ROLLOUT_PANELS = (
    ("predicted_error", "predicted error (shadowed requests)"),
    ("predicted_cost", "predicted USD per request (shadowed)"),
    ("observed_error", "observed error (requests served)"),
    ("upstream_error_rate", "upstream error rate (served)"),
)


def plot_rollout(table: pl.DataFrame):
    """Champion vs challenger per metric of :func:`router_core.rollout.rollout_comparison`'s table, each mean with
    its interval (a side without values is left out); the agreement rate in the title."""
    fig, axes = _pyplot().subplots(1, len(ROLLOUT_PANELS), figsize=(3.2 * len(ROLLOUT_PANELS), 3.2))
    for ax, (metric, label) in zip(axes, ROLLOUT_PANELS, strict=True):
        rows = table.filter((pl.col("metric") == metric) & pl.col("side").is_in(["champion", "challenger"]))
        rows = rows.filter(pl.col("mean").is_not_null())
        for i, row in enumerate(rows.iter_rows(named=True)):
            low, high = (row["mean"] if row[k] is None else row[k] for k in ("low", "high"))
            ax.errorbar([i], [row["mean"]], yerr=[[row["mean"] - low], [high - row["mean"]]], fmt="o", capsize=4)
        ax.set_xticks(
            range(rows.height),
            [f"{r['side']}\nv{r['router_version']} (n={r['count']})" for r in rows.iter_rows(named=True)],
            fontsize=7,
        )
        ax.set_xlim(-0.5, 1.5)
        ax.set_title(label, fontsize=8)
        ax.grid(alpha=0.3)
    agreement = table.filter(pl.col("metric") == "agreement")
    said = (
        ""
        if agreement.is_empty() or agreement["mean"][0] is None
        else (f": they agree on {agreement['mean'][0]:.0%} of {agreement['count'][0]:,} shadowed requests")
    )
    fig.suptitle(f"Champion vs challenger on the same traffic{said}", fontsize=10)
    fig.tight_layout()
    return fig
