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
    (one Axes or a list of them), with an optional label.

    A figure without a layout engine is switched to constrained layout first (what
    :func:`finish` chooses): a colour bar made before that switch would break it, and one made
    after it cannot be laid out by ``tight_layout``, so use :func:`finish`, not
    ``plt.tight_layout()``, on such a figure."""
    first = ax[0] if isinstance(ax, (list, tuple)) else (np.ravel(ax)[0]
                                                           if isinstance(ax, np.ndarray) else ax)
    fig = first.figure
    root = fig
    while not hasattr(root, "set_layout_engine"):      # a SubFigure: its root figure lays it out
        root = root.figure
    if root.get_layout_engine() is None:
        root.set_layout_engine("constrained")
    ax_arg = list(np.ravel(ax)) if isinstance(ax, (list, tuple, np.ndarray)) else ax
    cb = fig.colorbar(mappable, ax=ax_arg, **kwargs)
    if label:
        cb.set_label(label)
    return cb


def heatmap(ax, M, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
            *, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
            annotate: bool = True, fmt: str = "{:.2f}", cbar: bool = True,
            cbar_label: str | None = None, fontsize: float | None = None, aspect: str = "auto"):
    """Draw the matrix ``M`` (rows x columns) as a heat map on ``ax``.

    Column labels are rotated 45 degrees and right-aligned so long names do not collide; with
    ``annotate`` every cell shows its value (``fmt``), in black or white depending on the cell's
    brightness, at a font size that fits the cell, and clipped to nothing (the annotation stays
    inside the axes). ``aspect="equal"`` keeps the cells square (pixel grids). Returns
    ``(image, colorbar or None)``."""
    import matplotlib.pyplot as plt
    M = np.asarray(M, dtype=float)
    if M.ndim != 2:
        raise ValueError(f"heatmap(): M must be a 2-D matrix, got shape {M.shape}")
    finite = M[np.isfinite(M)]
    lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
    hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
    im = ax.imshow(M, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect)
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


def image_grid(axes, images, *, cmap: str = "RdBu_r", symmetric: bool = True,
               vmin: float | None = None, vmax: float | None = None,
               cbar_label: str | None = None, titles: Sequence[str] | None = None):
    """Show ``images`` (each 2-D, e.g. weight rows reshaped to 28x28, or conv kernels) on
    ``axes`` (an array of Axes, filled row by row; extra axes are blanked) with **one** colour
    scale shared by all of them and one colour bar beside the grid, so that colours can be
    compared between images. ``symmetric`` centres the scale on 0 (``vmin = -vmax``: for
    weights, with a diverging colour map). Axis frames and ticks are hidden. Returns
    ``(list of AxesImage, Colorbar)``."""
    flat = list(np.ravel(axes))
    imgs = [np.asarray(a, dtype=float) for a in images]
    if not imgs:
        raise ValueError("image_grid(): no images given")
    if len(imgs) > len(flat):
        raise ValueError(f"image_grid(): {len(imgs)} images for {len(flat)} axes")
    bad = [a.shape for a in imgs if a.ndim != 2]
    if bad:
        raise ValueError(f"image_grid(): every image must be 2-D, got shape {bad[0]}")
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in imgs])
    if symmetric:
        lim = float(np.max(np.abs(finite))) if finite.size else 1.0
        lo = -lim if vmin is None else vmin
        hi = lim if vmax is None else vmax
    else:
        lo = float(finite.min()) if vmin is None else vmin
        hi = float(finite.max()) if vmax is None else vmax
    shown = []
    for k, ax in enumerate(flat):
        ax.set_axis_off()
        if k < len(imgs):
            shown.append(ax.imshow(imgs[k], cmap=cmap, vmin=lo, vmax=hi))
            if titles is not None and k < len(titles):
                ax.set_title(titles[k], fontsize=8)
    cb = colorbar(shown[0], flat, cbar_label)
    return shown, cb


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
            if np.isnan(h):           # at the foot of the axes (also on a log scale)
                ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90,
                        transform=ax.get_xaxis_transform())     # upright: fits a narrow bar
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


def _texts(fig):
    """(description, Text) of every visible text of ``fig``: titles, axis and tick labels,
    annotations, legend entries, the suptitle."""
    out = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        out.append(("suptitle", fig._suptitle))
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        name = f"axes {k}"
        for t in (ax.title, ax._left_title, ax._right_title):
            if t.get_text():
                out.append((f"{name} title", t))
        if ax.axison:
            for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                if not axis.get_visible():          # a twin's shared axis
                    continue
                if axis.label.get_text() and axis.label.get_visible():
                    out.append((f"{name} {which} label", axis.label))
                lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
                for tick, val in zip(axis.get_ticklabels(), axis.get_ticklocs()):
                    if tick.get_text() and tick.get_visible() and lo <= val <= hi:
                        out.append((f"{name} {which} tick label {tick.get_text()!r}", tick))
        out += [(f"{name} annotation {t.get_text()!r} #{i}", t)
                for i, t in enumerate(ax.texts) if t.get_visible() and t.get_text()]
        leg = ax.get_legend()
        if leg is not None:
            out += [(f"{name} legend entry {t.get_text()!r}", t) for t in leg.get_texts()]
    for leg in fig.legends:
        out += [(f"figure legend entry {t.get_text()!r}", t) for t in leg.get_texts()]
    return out


def _collide(t1, b1, t2, b2, renderer) -> bool:
    """Do two tick labels overlap? Unrotated ones when their boxes do; two labels rotated by
    the same angle θ (not a multiple of 90°) are parallel strips one text-height h wide, which
    overlap when their anchors are closer than h / |sin θ| along the axis."""
    theta = t1.get_rotation() % 180
    if theta in (0, 90) or t2.get_rotation() % 180 != theta:
        return b1.overlaps(b2)
    h = renderer.points_to_pixels(t1.get_fontsize())
    (x1, y1), (x2, y2) = (t1.get_transform().transform(t1.get_position()),
                          t2.get_transform().transform(t2.get_position()))
    gap = max(abs(x1 - x2), abs(y1 - y2)) * abs(np.sin(np.radians(theta)))
    return gap < 0.9 * h


def layout_faults(fig) -> list[str]:
    """Sentences naming what is wrong with ``fig`` by the chapters' style (empty: nothing).

    Checks, after drawing the figure: every text lies inside the figure (nothing clipped);
    titles, axis labels and the suptitle do not overlap one another, nor do the tick labels of
    one axis, nor the annotations (``ax.text``) of one axes; an axes that plots lines has both axis labels (its own or, for a twin, its
    partner's x label); a per-epoch x axis (its label starts with "epoch") has ticks at whole
    numbers only; every labelled line of an axes and of its twins is in a legend. (Jupyter's inline back-end
    saves figures with ``bbox_inches="tight"``, which hides a clipped label in a notebook but
    not in ``fig.savefig``; :func:`finish` fixes both.)"""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    faults = []
    texts = _texts(fig)
    boxes = {}
    for name, t in texts:
        bb = t.get_window_extent(renderer)
        boxes[name] = bb
        if bb.x0 < -1 or bb.y0 < -1 or bb.x1 > W + 1 or bb.y1 > H + 1:
            faults.append(f"{name} is clipped by the figure's edge")
    big = [(n, b) for n, b in boxes.items() if "tick label" not in n and "legend" not in n
           and "annotation" not in n]
    for i, (n1, b1) in enumerate(big):
        for n2, b2 in big[i + 1:]:
            if b1.overlaps(b2):
                faults.append(f"{n1} overlaps {n2}")
    text_of = dict(texts)
    for k, ax in enumerate(fig.axes):
        notes = [(n, b) for n, b in boxes.items() if n.startswith(f"axes {k} annotation")]
        for i, (n1, b1) in enumerate(notes):
            for n2, b2 in notes[i + 1:]:
                if b1.overlaps(b2):
                    faults.append(f"{n1.rsplit(' #', 1)[0]} overlaps "
                                  f"{n2.split(' annotation ')[1].rsplit(' #', 1)[0]}")
        for which in ("x", "y"):
            ticks = [(n, b) for n, b in boxes.items()
                     if n.startswith(f"axes {k} {which} tick label")]
            for i, (n1, b1) in enumerate(ticks):
                for n2, b2 in ticks[i + 1:]:
                    if _collide(text_of[n1], b1, text_of[n2], b2, renderer):
                        faults.append(f"{n1} overlaps {n2.split(' tick label ')[1]}")
    groups = {}                      # axes sharing one position: an axes and its twins
    for ax in fig.axes:
        groups.setdefault(tuple(np.round(ax.get_position().bounds, 4)), []).append(ax)
    for k, ax in enumerate(fig.axes):
        if not ax.axison or not ax.lines:
            continue
        twins = groups[tuple(np.round(ax.get_position().bounds, 4))]
        if not any(a.get_xlabel() for a in twins):
            faults.append(f"axes {k} has no x label")
        shared_y = ax.get_shared_y_axes().get_siblings(ax)     # sharey=True: one label a row
        if not any(a.get_ylabel() for a in shared_y):
            faults.append(f"axes {k} has no y label")
        if ax.xaxis.get_visible() and any(a.get_xlabel().startswith("epoch") for a in twins):
            lo, hi = sorted(ax.get_xlim())
            bad = [round(float(t), 3) for t in ax.get_xticks()
                   if lo <= t <= hi and not float(t).is_integer()]
            if bad:
                faults.append(f"axes {k}: epoch ticks at non-whole epochs {bad[:3]}")
    for bounds, twins in groups.items():
        labelled = [n for a in twins for n in a.get_legend_handles_labels()[1]]
        shown = [t.get_text() for a in twins if a.get_legend() is not None
                 for t in a.get_legend().get_texts()]
        shown += [t.get_text() for leg in fig.legends for t in leg.get_texts()]  # fig.legend()
        missing = sorted(set(labelled) - set(shown))
        if labelled and missing:
            faults.append(f"axes {fig.axes.index(twins[0])}: labelled lines not in any legend: "
                          f"{missing}")
    return faults


def finish(fig) -> None:
    """Lay out ``fig`` so that labels, tick labels and colour bars are not clipped."""
    try:
        fig.set_layout_engine("constrained")
    except Exception:               # an older matplotlib or a layout already fixed: fall back
        fig.tight_layout()


__all__ = ["PANEL", "MAX_WIDTH", "size", "labels", "integer_ticks", "epoch_axis", "legend",
           "colorbar", "heatmap", "image_grid", "bars", "grouped_bars", "finish",
           "layout_faults"]
