"""The coverage figure draws what the report says: each cluster's validation and traffic share side by side, far
traffic prompts counted over the traffic bars."""

from __future__ import annotations

import matplotlib
import numpy as np

from router_core import CoverageReference, plot_coverage

matplotlib.use("Agg")


def test_bars_are_the_report_shares_and_far_prompts_are_labelled():
    x = np.array([[0.0, 0.0], [0.0, 0.2], [10.0, 0.0], [10.0, 0.2]])
    reference = CoverageReference.from_validation(np.eye(2)[[0, 0, 1, 1]], x)
    report = reference.report(np.eye(2)[[1, 1, 1, 0]], np.array([[10.0, 0.1], [10.0, 9.0], [0.0, 0.1]]))
    figure = plot_coverage(report.to_frame(), "shares")
    ax = figure.axes[0]
    heights = [round(bar.get_height(), 3) for bar in ax.patches]
    assert heights == [0.5, 0.5, 0.25, 0.75]  # validation bars, then traffic bars
    assert [t.get_text() for t in ax.texts] == ["1 far"]  # the prompt at (10, 9): nearest cluster 1
    assert ax.get_title() == "shares"
