"""Plots for reports: one way to make a figure and one way to finish it.

Figures are made with matplotlib's object API and the Agg canvas, never ``pyplot``: pyplot's
import alone costs about half a second, which a short run would feel. :func:`preload` imports the
plotting modules in a background thread while the nodes work, so writing the plot at the end of a
run costs only the drawing; :func:`finish_png` lets that drawing start even earlier, while the
nodes are torn down (see ``orchestrator.report.prefetch_busbw``).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

_preloading: threading.Thread | None = None


def _import() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def preload() -> None:
    """Start importing matplotlib in the background (idempotent)."""
    global _preloading
    if _preloading is None:
        _preloading = threading.Thread(target=_import, name="preload-matplotlib", daemon=True)
        _preloading.start()


def new_axes(width: float = 8.0, height: float = 4.5) -> tuple[Any, Any]:
    """A figure on the Agg canvas and its single axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _decorate(fig: Any, ax: Any, title: str, fontsize: float | None) -> None:
    ax.set_title(title, **({"fontsize": fontsize} if fontsize else {}))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()


def finish(fig: Any, ax: Any, path: Path, title: str, fontsize: float | None = None) -> Path:
    """The common tail of every report plot: title, grid, legend, tight layout, PNG at 110 dpi."""
    _decorate(fig, ax, title, fontsize)
    fig.savefig(path, dpi=110)
    return path


def finish_png(fig: Any, ax: Any, title: str, fontsize: float | None = None) -> bytes:
    """:func:`finish` into memory: the PNG's bytes, for a plot drawn before its folder is known."""
    _decorate(fig, ax, title, fontsize)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    return buf.getvalue()


def finish_svg(fig: Any, ax: Any, title: str, fontsize: float | None = None) -> str:
    """:func:`finish` as an inline ``<svg>`` element (no XML prolog) for an HTML page; text stays
    ``<text>`` (not glyph paths), so the page's words are searchable and readable in its DOM."""
    import matplotlib

    _decorate(fig, ax, title, fontsize)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]
