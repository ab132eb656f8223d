"""PNG plots of a training run, written beside the model (`plots/`) and embedded in its card: each
classification task's confusion matrix, the training losses (total and per task) and each task's main
evaluation metric over the steps; and the score-against-alpha curve of a weight interpolation.

matplotlib is optional (`pip install 'multitask-encoder[plots]'`): without it no plot is made, with one log
line. Figures are drawn with matplotlib's object API (`Figure.savefig`), never pyplot: the backend of the
process (a notebook's, say) is left alone.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any

from .model.configuration_multitask_encoder import MultiTaskEncoderConfig
from .task_types import task_type

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"


def write_plots(
    output_dir: str,
    config: MultiTaskEncoderConfig,
    results: dict[str, Any],
    log_history: list[dict[str, Any]],
) -> list[str]:
    """Write the run's plots into `output_dir/plots/`; returns their paths relative to `output_dir`."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed: no plots (pip install 'multitask-encoder[plots]').")
        return []
    folder = os.path.join(output_dir, PLOTS_DIR)
    os.makedirs(folder, exist_ok=True)
    written = []
    for task, spec in config.tasks.items():
        split = "test" if task in (results.get("test") or {}) else "validation"
        matrix = ((results.get(split) or {}).get(task) or {}).get("confusion_matrix")
        if matrix is None or len(matrix) != spec.num_outputs:
            continue
        figure = Figure(
            figsize=(1.2 + 0.55 * spec.num_outputs, 1.0 + 0.5 * spec.num_outputs), layout="constrained"
        )
        axes = figure.add_subplot()
        image = axes.imshow(matrix, cmap="Blues")
        axes.set_xticks(range(spec.num_outputs), spec.labels, rotation=45, ha="right")
        axes.set_yticks(range(spec.num_outputs), spec.labels)
        axes.set_xlabel("predicted")
        axes.set_ylabel("gold")
        axes.set_title(f"{task} ({split})")
        peak = max(max(row) for row in matrix) or 1
        for row, counts in enumerate(matrix):
            for column, count in enumerate(counts):
                colour = "white" if count > peak / 2 else "black"
                axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
        figure.colorbar(image, ax=axes, shrink=0.8)
        written.append(_save(figure, folder, f"confusion_{task}.png"))

    losses: dict[str, list[tuple[int, float]]] = defaultdict(list)
    scores: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if key == "loss":
                losses["total"].append((step, value))
            for task, spec in config.tasks.items():
                if key == f"{task}_loss":
                    losses[task].append((step, value))
                elif key == f"eval_{task}_loss":
                    losses[f"{task} (validation)"].append((step, value))
                elif key == f"eval_{task}_{task_type(spec).main_metric}":
                    scores[f"{task} {task_type(spec).main_metric}"].append((step, value))
    if losses:
        written.append(
            _curves(Figure, folder, "loss.png", losses, "loss (training, and validation per task)")
        )
    if scores:
        written.append(_curves(Figure, folder, "eval_metrics.png", scores, "validation (main metric)"))
    return [os.path.join(PLOTS_DIR, os.path.basename(path)) for path in written]


def write_interpolation_plot(
    path: str, alphas: list[float], series: dict[str, list[float | None]]
) -> str | None:
    """The WiSE-FT curve (multitask_encoder/interpolate.py): each series' score against alpha, one line each;
    returns `path`, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed: no plot (pip install 'multitask-encoder[plots]').")
        return None
    figure = Figure(figsize=(6, 3.8), layout="constrained")
    axes = figure.add_subplot()
    for label, values in series.items():
        points = [(alpha, value) for alpha, value in zip(alphas, values) if value is not None]
        if points:
            axes.plot(*zip(*points), label=label, marker="o")
    axes.set_xlabel("alpha (0: original encoder, 1: trained encoder)")
    axes.set_ylabel("validation score")
    axes.set_title("Weight interpolation (WiSE-FT)")
    axes.set_xlim(-0.03, 1.03)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    return path


def _curves(
    figure_class, folder: str, name: str, series: dict[str, list[tuple[int, float]]], title: str
) -> str:
    figure = figure_class(figsize=(6, 3.5), layout="constrained")
    axes = figure.add_subplot()
    for label, points in sorted(series.items()):
        steps, values = zip(*points)
        axes.plot(steps, values, label=label, marker=".", linestyle="--" if "(validation)" in label else "-")
    axes.set_xlabel("step")
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, folder, name)


def _save(figure, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    figure.savefig(path, dpi=110)
    return path


__all__ = ["PLOTS_DIR", "write_interpolation_plot", "write_plots"]
