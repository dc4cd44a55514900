"""A small figure style shared by the chapters: sizes, axis labels, epoch ticks, colour bars,
legends that see twin axes, annotated heat maps and bar charts whose zero bars stay visible.

Matplotlib is imported lazily (it is an optional dependency of ``ccledu``), so importing this
module costs nothing. Every helper takes an existing ``Axes`` and returns what it drew, so a
chapter keeps full control of its figure::

    import matplotlib.pyplot as plt
    from ccledu import plotting as P

    fig, ax = plt.subplots(figsize=P.size(1))
    ax.plot(epochs, loss, "o-", label="train")
    P.epoch_axis(ax)                      # x label "epoch", integer ticks only
    ax2 = ax.twinx(); ax2.plot(epochs, acc, "^--", color="C2", label="accuracy")
    P.legend(ax, ax2)                     # one legend with the lines of both axes
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: width and height (inches) of one panel; ``size(n)`` lays ``n`` panels side by side
PANEL = (4.0, 3.3)
#: the widest figure a chapter uses (inches); wider rows of panels are shrunk to it
MAX_WIDTH = 16.0


def size(ncols: int = 1, nrows: int = 1, panel: tuple[float, float] = PANEL) -> tuple[float, float]:
    """Figure size for ``nrows`` x ``ncols`` panels of ``panel`` inches, at most ``MAX_WIDTH`` wide
    (narrower panels keep their aspect ratio)."""
    if ncols < 1 or nrows < 1:
        raise ValueError(f"size(ncols={ncols}, nrows={nrows}): both must be at least 1")
    w, h = panel
    scale = min(1.0, MAX_WIDTH / (w * ncols))
    return (w * ncols * scale, h * nrows * scale)


def labels(ax, x: str | None = None, y: str | None = None, title: str | None = None):
    """Set the x label, y label and title of ``ax`` (``None`` leaves one unchanged)."""
    if x is not None:
        ax.set_xlabel(x)
    if y is not None:
        ax.set_ylabel(y)
    if title is not None:
        ax.set_title(title)
    return ax


def integer_ticks(axis) -> None:
    """Put ticks at whole numbers only on ``axis`` (``ax.xaxis`` or ``ax.yaxis``)."""
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True))


def epoch_axis(ax, label: str = "epoch"):
    """Label the x axis of a per-epoch curve and keep its ticks at whole epochs (no 1.5, 2.5)."""
    ax.set_xlabel(label)
    integer_ticks(ax.xaxis)
    return ax


def legend(ax, *others, **kwargs):
    """One legend on ``ax`` with the labelled lines of ``ax`` *and* of ``others`` (twin axes made
    with ``ax.twinx()``), which ``ax.legend()`` alone would leave out. Keyword arguments go to
    ``Axes.legend`` (``fontsize`` defaults to 8). Returns the ``Legend``."""
    handles, names = [], []
    for a in (ax, *others):
        h, n = a.get_legend_handles_labels()
        handles += h
        names += n
    if not handles:
        raise ValueError("legend(): none of the axes has a labelled artist; pass label=... "
                         "to plot() first")
    kwargs.setdefault("fontsize", 8)
    if others:      # draw ax (and so its legend) above the twin axes, whose lines would cover it
        ax.set_zorder(max(a.get_zorder() for a in others) + 1)
        ax.patch.set_visible(False)
    return ax.legend(handles, names, **kwargs)


def colorbar(mappable, ax, label: str | None = None, **kwargs):
    """A colour bar for ``mappable`` (what ``imshow``/``pcolormesh`` returned) beside ``ax``
    (one Axes or a list of them), with an optional label."""
    fig = (ax[0] if isinstance(ax, (list, tuple, np.ndarray)) else ax).figure
    ax_arg = list(np.ravel(ax)) if isinstance(ax, (list, tuple, np.ndarray)) else ax
    cb = fig.colorbar(mappable, ax=ax_arg, **kwargs)
    if label:
        cb.set_label(label)
    return cb


def heatmap(ax, M, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
            *, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
            annotate: bool = True, fmt: str = "{:.2f}", cbar: bool = True,
            cbar_label: str | None = None, fontsize: float | None = None):
    """Draw the matrix ``M`` (rows x columns) as a heat map on ``ax``.

    Column labels are rotated 45 degrees and right-aligned so long names do not collide; with
    ``annotate`` every cell shows its value (``fmt``), in black or white depending on the cell's
    brightness, at a font size that fits the cell, and clipped to nothing (the annotation stays
    inside the axes). Returns ``(image, colorbar or None)``."""
    import matplotlib.pyplot as plt
    M = np.asarray(M, dtype=float)
    if M.ndim != 2:
        raise ValueError(f"heatmap(): M must be a 2-D matrix, got shape {M.shape}")
    finite = M[np.isfinite(M)]
    lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
    hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
    im = ax.imshow(M, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    n_rows, n_cols = M.shape
    if col_labels is not None:
        ax.set_xticks(range(n_cols), list(col_labels), rotation=45, ha="right",
                      rotation_mode="anchor")
    if row_labels is not None:
        ax.set_yticks(range(n_rows), list(row_labels))
    if annotate:
        size_pt = fontsize if fontsize is not None else float(np.clip(60.0 / max(n_rows, n_cols), 5, 9))
        cmap_obj = plt.get_cmap(cmap)
        span = (hi - lo) or 1.0
        for (i, j), v in np.ndenumerate(M):
            if not np.isfinite(v):
                continue
            r, g, b, _ = cmap_obj(float(np.clip((v - lo) / span, 0, 1)))
            bright = 0.299 * r + 0.587 * g + 0.114 * b
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=size_pt,
                    color="black" if bright > 0.5 else "white", clip_on=True)
    cb = colorbar(im, ax, cbar_label) if cbar else None
    return im, cb


def bars(ax, x, heights, *, width: float = 0.8, zero_marker: bool = True, **kwargs):
    """``ax.bar(x, heights, width, **kwargs)``, with bars of height exactly zero marked by a short
    dark line and a "0" above it, so they cannot be mistaken for missing data; NaN heights are
    labelled "n/a". Returns the ``BarContainer``."""
    heights = np.asarray(heights, dtype=float)
    names = [str(v) for v in x] if len(x) and isinstance(list(x)[0], str) else None
    x = np.arange(len(heights), dtype=float) if names else np.asarray(x, dtype=float)
    if len(x) != len(heights):
        raise ValueError(f"bars(): {len(x)} positions for {len(heights)} heights")
    container = ax.bar(x, np.nan_to_num(heights), width, **kwargs)
    if names:
        ax.set_xticks(x, names)
    if zero_marker:
        color = container.patches[0].get_facecolor() if container.patches else "k"
        top = np.nanmax(np.abs(heights)) if np.isfinite(heights).any() else 1.0
        for xi, h in zip(x, heights):
            if np.isnan(h):
                ax.text(xi, 0.02 * (top or 1.0), "n/a", ha="center", va="bottom", fontsize=7)
            elif h == 0:
                ax.plot([xi - width / 2, xi + width / 2], [0, 0], color=color, lw=3,
                        solid_capstyle="butt")
                ax.text(xi, 0.02 * (top or 1.0), "0", ha="center", va="bottom", fontsize=7,
                        color=color)
    return container


def grouped_bars(ax, groups: Sequence[str], series: dict, *, width: float = 0.8, **kwargs):
    """Bars of several series side by side in each group: ``series`` maps a legend label to one
    height per group. Zero heights are marked as in :func:`bars`. Returns the containers."""
    k = len(series)
    if k == 0:
        raise ValueError("grouped_bars(): series is empty")
    w = width / k
    out = []
    for s, (name, hs) in enumerate(series.items()):
        hs = list(hs)
        if len(hs) != len(groups):
            raise ValueError(f"grouped_bars(): series {name!r} has {len(hs)} heights for "
                             f"{len(groups)} groups")
        xs = np.arange(len(groups)) + (s - (k - 1) / 2) * w
        out.append(bars(ax, xs, hs, width=w, label=name, color=f"C{s}", **kwargs))
    ax.set_xticks(range(len(groups)), list(groups))
    return out


def finish(fig) -> None:
    """Lay out ``fig`` so that labels, tick labels and colour bars are not clipped."""
    try:
        fig.set_layout_engine("constrained")
    except Exception:               # an older matplotlib or a layout already fixed: fall back
        fig.tight_layout()


__all__ = ["PANEL", "MAX_WIDTH", "size", "labels", "integer_ticks", "epoch_axis", "legend",
           "colorbar", "heatmap", "bars", "grouped_bars", "finish"]
