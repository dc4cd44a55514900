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


def test_nan_bar_label_stays_at_the_foot_of_a_log_axis(fig_ax):
    fig, ax = fig_ax
    P.bars(ax, ["BP", "FA"], [2e4, float("nan")])
    ax.set_yscale("log")
    (label,) = ax.texts
    assert label.get_text() == "n/a" and label.get_transform() == ax.get_xaxis_transform()
    assert ax.get_ylim()[0] > 1e3      # the label did not stretch the log axis down to 1e-18


def test_crowded_annotations_are_found():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1]); P.labels(ax, "x", "y")
    ax.text(0.5, 0.5, "n/a n/a"); ax.text(0.52, 0.5, "n/a n/a")
    assert any("annotation 'n/a n/a' overlaps 'n/a n/a'" in f for f in P.layout_faults(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=P.size(1))
    P.grouped_bars(ax, ["bp", "fa"], {f"s{i}": [1.0, float("nan")] for i in range(6)})
    P.labels(ax, "rule", "samples / s"); P.legend(ax); P.finish(fig)
    assert P.layout_faults(fig) == []              # six n/a labels side by side, upright
    plt.close(fig)


def test_image_grid_shares_one_scale_and_one_colorbar():
    fig, axes = plt.subplots(2, 3)
    imgs = [np.full((3, 3), v) for v in (-0.5, 0.1, 2.0, 0.3)]
    shown, cb = P.image_grid(axes, imgs, cbar_label="weight")
    assert len(shown) == 4 and cb.ax.get_ylabel() == "weight"
    assert {im.get_clim() for im in shown} == {(-2.0, 2.0)}      # symmetric about 0, shared
    assert len(fig.axes) == 7 and not any(a.axison for a in axes.ravel())
    shown, _ = P.image_grid(axes[0], imgs[:2], symmetric=False)
    assert shown[0].get_clim() == (-0.5, 0.1)
    with pytest.raises(ValueError, match="5 images for 3 axes"):
        P.image_grid(axes[0], imgs + imgs[:1])
    with pytest.raises(ValueError, match="2-D"):
        P.image_grid(axes[0], [np.zeros(3)])
    plt.close(fig)


def test_image_grid_in_a_subfigure_beside_curves():
    fig = plt.figure(figsize=(10, 3))
    left, right = fig.subfigures(1, 2)
    ax = left.subplots()
    ax.plot([1, 2], [1, 2], label="loss")
    P.epoch_axis(ax); P.labels(ax, y="loss"); P.legend(ax)
    _, cb = P.image_grid(right.subplots(2, 2), [np.eye(3)] * 4, cbar_label="weight")
    P.finish(fig)
    assert fig.get_layout_engine() is not None and cb.ax.get_ylabel() == "weight"
    assert P.layout_faults(fig) == []
    plt.close(fig)


def test_heatmap_square_cells():
    fig, ax = plt.subplots()
    P.heatmap(ax, np.eye(4), aspect="equal", cbar=False)
    assert ax.get_aspect() == 1.0 and len(fig.axes) == 1
    plt.close(fig)


def _bad_figure():
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6, 3))
    a1.plot([1, 2, 3], [3, 2, 1], label="train CE")
    a1.set_xlabel("epoch")                                  # 1.5, 2.5 ticks; no y label
    twin = a1.twinx()
    twin.plot([1, 2, 3], [50, 70, 80], label="accuracy")
    twin.set_ylabel("accuracy (%)")
    a1.legend()                                             # leaves the twin's line out
    a2.plot([0, 1], [0, 1])
    a2.set_ylabel("a y label long enough to leave the figure " * 3)
    a2.set_title("a title that runs into its neighbour " * 2)
    a1.set_title("loss")
    return fig


def test_layout_faults_name_each_fault():
    fig = _bad_figure()
    faults = P.layout_faults(fig)
    text = "\n".join(faults)
    assert "axes 0 has no y label" in text
    assert "axes 1 has no x label" in text
    assert "axes 0: epoch ticks at non-whole epochs [1.5, 2.5]" in text     # plain, rounded numbers
    assert "labelled lines not in any legend: ['accuracy']" in text
    assert "axes 1 y label is clipped" in text
    assert "axes 1 title overlaps axes 0 title" in text or "axes 0 title overlaps axes 1 title" in text
    plt.close(fig)


def test_layout_faults_pass_a_figure_made_with_the_helpers():
    fig, (a1, a2) = plt.subplots(1, 2, figsize=P.size(2))
    a1.plot([1, 2, 3], [3, 2, 1], label="train CE")
    P.epoch_axis(a1); P.labels(a1, y="cross-entropy", title="loss")
    twin = a1.twinx()
    twin.plot([1, 2, 3], [50, 70, 80], "C2", label="accuracy")
    twin.set_ylabel("accuracy (%)")
    P.legend(a1, twin)
    P.heatmap(a2, np.eye(3), ["a_1", "a_2", "logits"], ["a_1", "a_2", "logits"])
    P.finish(fig)
    assert P.layout_faults(fig) == []
    plt.close(fig)


def test_tick_label_collisions_straight_and_rotated():
    names = [f"grad/forward.{i}.weight" for i in range(25)]
    for rotation, collide in ((0, True), (75, False)):
        fig, ax = plt.subplots(figsize=(11, 4.6))
        ax.plot(range(25), range(25), "o")
        ax.set_xticks(range(25), names, rotation=rotation, fontsize=7)
        P.labels(ax, "tensor", "value")
        P.finish(fig)
        hits = [f for f in P.layout_faults(fig) if "tick label" in f and "overlaps" in f]
        assert bool(hits) == collide, (rotation, hits[:2])
        plt.close(fig)
