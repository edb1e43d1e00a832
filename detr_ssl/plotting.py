"""matplotlib, imported only where a figure is drawn (it is the optional ``plots`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detr_ssl.atomic_io import atomic_write

__all__ = ["new_figure", "save_figure"]


def new_figure(path: Path, width: float = 6.0, height: float = 4.0) -> Any:
    """A matplotlib ``Figure`` (Agg canvas, constrained layout) that will be saved to ``path``, or None,
    after saying so, when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"matplotlib is not installed (pip install 'detr-ssl[plots]'): {path.name} not drawn", flush=True)
        return None
    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: Path) -> None:
    """Writes ``figure`` as PNG to ``path`` atomically."""
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
