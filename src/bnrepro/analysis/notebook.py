"""What the notebooks in notebooks/ share: figures, tables and prose shown with a
machine-readable record of what they hold (the analyses themselves come from bnrepro.experiments).

Every figure, table and sentence a notebook shows goes through `show`, `show_table` or `say`.
Each output carries its record in the output's metadata under RECORD_KEY, invisible in
Jupyter, so the notebook test (tests/test_notebooks.py) can check an executed notebook
without parsing pictures or HTML: that every panel of every figure has data in view, and
that the numbers shown are the run store's.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import Collection, PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.transforms import Transform

RECORD_KEY = "bnrepro"  # output metadata key: {"figure": ...} | {"table": ...} | {"text": ...}


def _in_view(ax: Axes, transform: Transform, xy: np.ndarray) -> int:
    """How many of the points xy [n, 2] (in `transform`'s coordinates) are finite and inside
    the axes' view."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if not len(xy):
        return 0
    inside = ax.transAxes.inverted().transform(transform.transform(xy))
    eps = 1e-9
    return int(((inside >= -eps) & (inside <= 1 + eps)).all(axis=1).sum())


def _data_points(ax: Axes) -> dict[str, list[int]]:
    """Per kind of artist that shows data (plotted lines, filled areas and scatter points,
    images and meshes): the number of its data points that are finite and in view. Lines in
    axes coordinates (axhline, axvline: reference lines, not data) are not counted."""
    counts: dict[str, list[int]] = {"lines": [], "collections": [], "images": []}
    for line in ax.lines:
        if isinstance(line, Line2D) and line.get_transform() == ax.transData:
            counts["lines"].append(_in_view(ax, ax.transData, line.get_xydata()))
    for coll in ax.collections:
        if not isinstance(coll, Collection):
            continue
        if isinstance(coll, PathCollection):  # scatter: the points are the offsets
            transform = coll.get_offset_transform()
            points = _in_view(ax, transform, coll.get_offsets()) if transform == ax.transData \
                else 0
        elif (values := coll.get_array()) is not None:  # a mesh (colorbar, pcolormesh)
            points = int(np.isfinite(np.ma.filled(np.asarray(values, float), np.nan)).sum())
        else:  # fill_between and other polygons: their vertices
            points = sum(_in_view(ax, ax.transData, p.vertices) for p in coll.get_paths()) \
                if coll.get_transform() == ax.transData else 0
        counts["collections"].append(points)
    for image in ax.images:
        if isinstance(image, AxesImage):
            values = np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)
            counts["images"].append(int(np.isfinite(values).sum()))
    return counts


def figure_record(fig: Figure) -> dict[str, Any]:
    """What a figure shows: its suptitle; per visible axes its title, axis labels, and the
    counts of `_data_points` (and their sum, `points`); `empty_axes` names the visible axes
    with no data point in view."""
    axes = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        counts = _data_points(ax)
        axes.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(),
                     "ylabel": ax.get_ylabel(), **counts,
                     "points": sum(sum(v) for v in counts.values())})
    empty = [a["title"] or a["ylabel"] or a["xlabel"] or f"axes {i}"
             for i, a in enumerate(axes) if a["points"] == 0]
    return {"suptitle": fig.get_suptitle(), "axes": axes, "empty_axes": empty}


def _display(data: dict[str, Any], record: dict[str, Any]) -> None:
    from IPython.display import display  # only where a notebook (or IPython) runs

    display(data, raw=True, metadata={RECORD_KEY: record})


def show(fig: Figure, name: str, dpi: int = 100) -> dict[str, Any]:
    """Show `fig` inline as a PNG and close it; the output's metadata holds `name` and
    `figure_record(fig)`, which is also returned. Rendering here, not through the inline
    backend, makes the picture independent of the backend the plot scripts select."""
    record = {"name": name, **figure_record(fig)}
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    matplotlib.pyplot.close(fig)
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    _display({"image/png": png, "text/plain": f"<figure {name}>"}, {"figure": record})
    return record


def show_table(table: pd.DataFrame, name: str, float_format: str = "{:.4f}") -> None:
    """Show `table` as HTML (floats as `float_format`); the output's metadata holds the
    table's exact values (JSON, split orientation) under `name`."""
    values = json.loads(table.to_json(orient="split", double_precision=15))
    html = table.to_html(float_format=float_format.format, na_rep="-")
    _display({"text/html": html, "text/plain": table.to_string()},
             {"table": {"name": name, **values}})


def say(text: str) -> None:
    """Show prose (Markdown) whose numbers were computed in the cell; the output's metadata
    holds the text too."""
    _display({"text/markdown": text, "text/plain": text}, {"text": text})
