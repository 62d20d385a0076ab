"""A PNG bar chart of tokens per rank for every scenario of a LoadReport (matplotlib optional)."""

from __future__ import annotations

import numpy as np

from torchair_plugin.eplb.load_report import LoadReport

INSTALL_HINT = "the PNG chart needs matplotlib: pip install torchair-plugin[plot]"


def plot_rank_loads(report: LoadReport, path: str, *, title: str = "Tokens per rank") -> None:
    """Write grouped bars (one group per rank, one bar per scenario) with the mean as a line.

    Raises ImportError with an install hint when matplotlib is missing. Uses the Agg canvas
    directly, so the caller's pyplot backend and state are left alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(INSTALL_HINT) from None

    ranks = np.arange(report.world_size)
    width = 0.8 / len(report.scenarios)
    figure = Figure(figsize=(max(6.0, 0.5 * report.world_size + 2), 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for i, scenario in enumerate(report.scenarios):
        axes.bar(ranks + (i - (len(report.scenarios) - 1) / 2) * width, scenario.rank_tokens, width,
                 label=f"{scenario.name} (max/mean {scenario.imbalance:.3f})")
    axes.axhline(report.scenarios[0].rank_tokens.mean(), color="black", linestyle="--", linewidth=1, label="mean")
    axes.set_xticks(ranks)
    axes.set_xlabel("rank")
    axes.set_ylabel("tokens received")
    axes.set_title(title)
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    figure.tight_layout()
    figure.savefig(path, format="png")
