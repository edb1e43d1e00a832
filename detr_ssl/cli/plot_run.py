"""``scripts/plot_run.py OUTPUT_DIR``: a training run's ``scalars.csv`` as one PNG.

Panels: the loss and its terms (the last decoder layer's; ``--aux`` adds the earlier layers' copies), the
learning rate of each parameter group, the validation metrics (AP in %, when the run evaluated), and any
other scalar the task logs (gradient norm, momentum, ...), all against the optimizer step.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from detr_ssl.cli.common import run_main
from detr_ssl.errors import ConfigError, DataError
from detr_ssl.plotting import new_figure, save_figure

SCALARS_FILE = "scalars.csv"
AUX_TERM = re.compile(r"_\d+$")
"""An auxiliary copy of a loss term: ``train/loss_bbox_0`` is the first decoder layer's ``loss_bbox``."""


@dataclass(frozen=True)
class PlotRunConfig:
    """Draw a run's losses, learning rates and validation metrics from its scalars.csv."""

    run_dir: tyro.conf.Positional[Path]
    """The run's --output-dir (it holds scalars.csv)."""
    output: Path | None = None
    """The PNG to write (default: RUN_DIR/run.png)."""
    aux: bool = False
    """Also draw the auxiliary (earlier decoder layer) copies of the loss terms."""


Series = dict[str, tuple[list[int], list[float]]]


def read_scalars(path: Path) -> Series:
    """``tag -> (steps, values)`` in logging order; a DataError naming the file when it is not a scalars log."""
    if not path.is_file():
        raise DataError(f"{path}: not found (is this a training run's --output-dir?)")
    series: Series = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["step", "tag", "value"]:
            raise DataError(f"{path}: expected the columns step,tag,value, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                step, value = int(row["step"]), float(row["value"])
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {line} is not step,tag,value ({row})") from None
            steps, values = series.setdefault(row["tag"], ([], []))
            steps.append(step)
            values.append(value)
    if not series:
        raise DataError(f"{path}: holds no scalars yet")
    return series


def panels(series: Series, aux: bool) -> dict[str, list[str]]:
    """Panel title -> the tags drawn in it (empty panels left out)."""
    groups: dict[str, list[str]] = {"loss": [], "learning rate": [], "validation (%)": [], "other": []}
    for tag in sorted(series):
        if tag == "epoch":
            continue
        if tag.startswith("train/loss"):
            if aux or not AUX_TERM.search(tag):
                groups["loss"].append(tag)
        elif tag.startswith("lr/"):
            groups["learning rate"].append(tag)
        elif tag.startswith("val/"):
            groups["validation (%)"].append(tag)
        else:
            groups["other"].append(tag)
    return {title: tags for title, tags in groups.items() if tags}


def plot_run(cfg: PlotRunConfig) -> Path | None:
    """Writes the PNG; returns its path (None when matplotlib is missing)."""
    series = read_scalars(cfg.run_dir / SCALARS_FILE)
    output = cfg.output or cfg.run_dir / "run.png"
    if output.suffix.lower() != ".png":
        raise ConfigError(f"--output {output}: the figure is written as PNG; name it *.png")
    layout = panels(series, cfg.aux)
    rows = 1 if len(layout) <= 2 else 2
    columns = -(-len(layout) // rows)
    figure = new_figure(output, width=5.0 * columns, height=3.4 * rows + 0.4)
    if figure is None:
        return None
    for index, (title, tags) in enumerate(layout.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        for tag in tags:
            steps, values = series[tag]
            scale = 100.0 if tag.startswith("val/") else 1.0
            axes.plot(steps, [v * scale for v in values], marker="o" if len(steps) < 20 else None, markersize=3,
                      linewidth=2.0 if tag == "train/loss" else 1.0, label=tag.split("/", 1)[1])
        if title == "learning rate":
            axes.set_yscale("log")
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(str(cfg.run_dir))
    save_figure(figure, output)
    print(f"wrote {output}")
    return output


def main(argv: list[str]) -> int:
    plot_run(tyro.cli(PlotRunConfig, args=argv))
    return 0


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli())
