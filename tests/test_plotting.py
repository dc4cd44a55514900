"""ccledu.plotting: the shared figure style of the chapters, drawn for real with matplotlib (Agg)."""
import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ccledu import plotting as P  # noqa: E402


@pytest.fixture
def fig_ax():
    fig, ax = plt.subplots(figsize=P.size(1))
    yield fig, ax
    plt.close(fig)


def test_size_scales_and_caps():
    assert P.size(1) == P.PANEL
    w, h = P.size(2, 2)
    assert w == pytest.approx(2 * P.PANEL[0]) and h == pytest.approx(2 * P.PANEL[1])
    w, h = P.size(10)
    assert w == pytest.approx(P.MAX_WIDTH) and h < P.PANEL[1]
    with pytest.raises(ValueError, match="at least 1"):
        P.size(0)


def test_twin_axis_legend_holds_both_lines(fig_ax):
    fig, ax = fig_ax
    ax.plot([1, 2, 3], [3, 2, 1], label="train CE")
    ax2 = ax.twinx()
    ax2.plot([1, 2, 3], [50, 70, 80], label="val. accuracy")
    leg = P.legend(ax, ax2)
    assert [t.get_text() for t in leg.get_texts()] == ["train CE", "val. accuracy"]
    assert ax.get_zorder() > ax2.get_zorder()        # the legend is not hidden under ax2's lines
    # the plain legend would have missed the twin axis' line
    assert [t.get_text() for t in ax.legend().get_texts()] == ["train CE"]


def test_legend_without_labels_is_a_clear_error(fig_ax):
    _, ax = fig_ax
    ax.plot([1, 2], [1, 2])
    with pytest.raises(ValueError, match="label="):
        P.legend(ax)


def test_epoch_axis_has_integer_ticks_and_label(fig_ax):
    fig, ax = fig_ax
    ax.plot([1, 2, 3], [0.5, 0.4, 0.3])
    P.epoch_axis(ax)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert ax.get_xlabel() == "epoch"
    # without the helper matplotlib puts ticks at 1.5, 2.5 on this curve
    fig2, ax2 = plt.subplots()
    ax2.plot([1, 2, 3], [0.5, 0.4, 0.3])
    fig2.canvas.draw()
    assert any(not float(t).is_integer() for t in ax2.get_xticks())
    plt.close(fig2)


def test_heatmap_has_colorbar_labels_and_every_value(fig_ax):
    fig, ax = fig_ax
    M = np.array([[1.0, 0.25, 0.0], [0.5, 0.95, 0.125]])
    im, cb = P.heatmap(ax, M, ["a_1", "a_2"], ["a_1", "a_2", "logits"], vmin=0, vmax=1,
                       cbar_label="linear CKA")
    assert cb is not None and cb.ax.get_ylabel() == "linear CKA"
    assert len(fig.axes) == 2                        # the panel and its colour bar
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(f"{v:.2f}" for v in M.ravel())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a_1", "a_2", "logits"]
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    # values are written in a colour that contrasts with their cell: dark text on bright cells
    by_value = {t.get_text(): t.get_color() for t in ax.texts}
    assert by_value["0.95"] != by_value["0.00"]
    with pytest.raises(ValueError, match="2-D"):
        P.heatmap(ax, np.zeros(3))


def test_colorbar_for_a_row_of_panels():
    fig, axes = plt.subplots(1, 3)
    im = None
    for a in axes:
        im = a.imshow(np.eye(3), vmin=-1, vmax=1)
    cb = P.colorbar(im, axes, "cosine")
    assert cb.ax.get_ylabel() == "cosine" and len(fig.axes) == 4
    plt.close(fig)


def test_zero_bars_are_marked_not_missing(fig_ax):
    fig, ax = fig_ax
    P.bars(ax, ["BP", "FA", "DFA"], [0.0, 80.0, float("nan")])
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0", "n/a"]
    assert len(ax.lines) == 1                        # the dark stroke on the zero bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["BP", "FA", "DFA"]


def test_grouped_bars_mark_zero_and_check_lengths(fig_ax):
    fig, ax = fig_ax
    out = P.grouped_bars(ax, ["W_1", "W_2"], {"BP": [0.0, 0.0], "CCL": [80.0, 85.0]})
    assert len(out) == 2 and [t.get_text() for t in ax.texts] == ["0", "0"]
    with pytest.raises(ValueError, match="2 heights for 3 groups"):
        P.grouped_bars(ax, ["a", "b", "c"], {"x": [1, 2]})
