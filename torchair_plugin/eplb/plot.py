"""A PNG chart of a LoadReport, readable from 8 to 256 ranks (matplotlib optional).

One bar per rank stops being readable past a few dozen ranks, so nothing here is drawn per rank
at a fixed width: left, every rank's load divided by the mean, sorted heaviest first, one curve
per scenario on a log scale (a hot rank without redundancy can carry 15x the mean while a
balanced table stays within a few percent of it, and both must be visible); right, the number
that decides the step time, the heaviest rank / mean, per scenario. The setup that produced the
loads is in the title.
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
_FLOOR = 1e-2  # lowest load / mean drawn: a rank receiving nothing sits on the bottom edge


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


def plot_rank_loads(
    report: LoadReport,
    path: str,
    *,
    notes: Sequence[str] = (),
    title: str = "Tokens per rank through npu_moe_update_expert",
) -> None:
    """Write the chart to ``path`` (PNG). ``notes`` are added to the setup line (e.g. the skew and
    the balance_mode the table was planned for). The file appears whole or not at all.

    Raises ImportError with an install hint when matplotlib is missing. Uses the Agg canvas
    directly, so the caller's pyplot backend and state are left alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator
    except ImportError:
        raise ImportError(INSTALL_HINT) from None

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    curves, summary = figure.subplots(1, 2, width_ratios=(3, 2))
    ranks = np.arange(report.world_size)
    marker = "o" if report.world_size <= _MARKERS_UP_TO else None
    mean = report.scenarios[0].rank_tokens.mean()  # every scenario routes the same tokens
    peaks, lowest = [], 1.0
    for scenario in report.scenarios:
        relative = np.sort(scenario.rank_tokens)[::-1] / mean if mean > 0 else np.ones(report.world_size)
        curves.plot(
            ranks, np.maximum(relative, _FLOOR), marker=marker, markersize=4, linewidth=1.8, label=scenario.name
        )
        peaks.append(float(relative.max()))
        lowest = min(lowest, float(relative.min()))
    curves.axhline(1.0, color="black", linestyle="--", linewidth=1, label="mean")
    curves.set_yscale("log")
    curves.set_ylim(max(_FLOOR, lowest / 1.5), max(2.0, 1.5 * max(peaks)))
    curves.set(
        title="every rank's load, heaviest first", xlabel="ranks, sorted by load", ylabel="load / mean (log scale)"
    )
    curves.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5, not 5 x 10^-1
    curves.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    curves.yaxis.set_major_formatter(plain)
    curves.yaxis.set_minor_formatter(plain)
    curves.set_xlim(-0.5, report.world_size - 0.5)
    curves.grid(alpha=0.3, which="both")
    curves.legend(loc="lower left")

    names = [s.name for s in report.scenarios]
    colors = [line.get_color() for line in curves.get_lines()[: len(names)]]
    bars = summary.barh(names, peaks, color=colors)
    summary.invert_yaxis()  # scenarios top to bottom in report order
    idle = [int((s.expert_tokens == 0).sum()) for s in report.scenarios]
    summary.bar_label(bars, labels=[f" {p:.3f}  ({n} idle physical experts)" for p, n in zip(peaks, idle)])
    summary.axvline(1.0, color="black", linestyle="--", linewidth=1)
    summary.set_xlim(0, max(peaks) * 1.9)
    summary.set(title="heaviest rank / mean (sets the step time)", xlabel="heaviest rank / mean")
    figure.suptitle(f"{title}\n{setup_line(report, notes)}", fontsize="large")

    _write_whole(figure, path)


def _write_whole(figure, path: str) -> None:
    """Render beside ``path`` and rename: a failure leaves no half-written PNG behind."""
    try:
        with tempfile.NamedTemporaryFile(
            dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".png", delete=False
        ) as partial:
            try:
                figure.savefig(partial, format="png", metadata={"Software": None})
                partial.close()
                os.replace(partial.name, path)
            except BaseException:
                os.unlink(partial.name)
                raise
    except OSError as error:
        raise OSError(f"{path}: cannot write: {error.strerror or error}") from None
