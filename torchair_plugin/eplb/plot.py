"""A PNG chart of a LoadReport, readable from 8 to 256 ranks (matplotlib optional).

One bar per rank stops being readable past a few dozen ranks, so the chart draws lines whose
size does not depend on the rank count: left, tokens per rank in rank order; right, the same
loads sorted heaviest first and divided by the mean (the heaviest rank sets the step time, so
the left end of each curve is what matters). The setup that produced the loads is in the title.
"""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import numpy as np

from torchair_plugin.eplb.load_report import LoadReport

INSTALL_HINT = "the PNG chart needs matplotlib: pip install torchair-plugin[plot]"
FIGURE_INCHES = (12.0, 5.6)
DPI = 100  # 1200 x 560 pixels at any rank count
_MARKERS_UP_TO = 32  # ranks; beyond, markers merge into a smear


def setup_line(report: LoadReport, notes: Sequence[str] = ()) -> str:
    """The setup in one line: what the chart's loads came from."""
    physical = report.slots_per_rank * report.world_size
    parts = [
        f"{report.world_size} ranks",
        f"{report.num_experts} experts -> {physical} physical ({report.slots_per_rank} per rank)",
        f"{report.tokens // report.world_size} tokens/rank",
        f"top-{report.top_k}",
        *notes,
    ]
    return ", ".join(parts)


def plot_rank_loads(report: LoadReport, path: str, *, notes: Sequence[str] = (),
                    title: str = "Tokens per rank through npu_moe_update_expert") -> None:
    """Write the chart to ``path`` (PNG). ``notes`` are added to the setup line (e.g. the skew and
    the balance_mode the table was planned for). The file appears whole or not at all.

    Raises ImportError with an install hint when matplotlib is missing. Uses the Agg canvas
    directly, so the caller's pyplot backend and state are left alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(INSTALL_HINT) from None

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    by_rank, sorted_axes = figure.subplots(1, 2)
    ranks = np.arange(report.world_size)
    marker = "o" if report.world_size <= _MARKERS_UP_TO else None
    mean = report.scenarios[0].rank_tokens.mean()  # every scenario routes the same tokens
    for scenario in report.scenarios:
        label = f"{scenario.name} (max/mean {scenario.imbalance:.3f})"
        by_rank.plot(ranks, scenario.rank_tokens, marker=marker, markersize=4, linewidth=1.5, label=label)
        relative = np.sort(scenario.rank_tokens)[::-1] / mean if mean > 0 else np.ones(report.world_size)
        sorted_axes.plot(ranks, relative, marker=marker, markersize=4, linewidth=1.5, label=label)
    by_rank.axhline(mean, color="black", linestyle="--", linewidth=1, label="mean")
    sorted_axes.axhline(1.0, color="black", linestyle="--", linewidth=1)
    by_rank.set(title="tokens received, by rank", xlabel="rank", ylabel="tokens")
    sorted_axes.set(title="ranks sorted by load (heaviest sets the step time)",
                    xlabel="ranks, heaviest first", ylabel="load / mean")
    for axes in (by_rank, sorted_axes):
        axes.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        axes.set_xlim(-0.5, report.world_size - 0.5)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    sorted_axes.legend(fontsize="medium", loc="lower left")
    figure.suptitle(f"{title}\n{setup_line(report, notes)}", fontsize="large")

    _write_whole(figure, path)


def _write_whole(figure, path: str) -> None:
    """Render beside ``path`` and rename: a failure leaves no half-written PNG behind."""
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                                         suffix=".png", delete=False) as partial:
            try:
                figure.savefig(partial, format="png", metadata={"Software": None})
                partial.close()
                os.replace(partial.name, path)
            except BaseException:
                os.unlink(partial.name)
                raise
    except OSError as error:
        raise OSError(f"{path}: cannot write: {error.strerror or error}") from None
