"""Tests of erl_derain.plots: valid PNGs, counts and colours against independent references.

References: ``numpy.histogram`` on the shared edges, hand-worked blends and fractions (written out
in the comments), PIL reading back every PNG.  (The RIM and the improved proportions themselves
are computed, and tested, in ``erl_derain.metrics``.)
"""

import math
import os
import threading

import numpy as np
import pytest
from PIL import Image

from erl_derain import plots


def _check_png(path, min_side=100):
    assert os.path.isfile(path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        arr = np.asarray(im.convert("RGB"))
    assert min(w, h) >= min_side
    assert arr.std() > 0, "the PNG is a blank image"
    # No temporary file left behind in the folder.
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]
    return w, h


@pytest.fixture
def runs():
    rng = np.random.default_rng(0)
    return {
        "rainy": rng.normal(14.0, 2.0, 40),
        "MEMD": list(rng.normal(28.0, 2.0, 40)),
        "ERL-Net": np.append(rng.normal(29.5, 2.0, 39), np.inf),  # one exact restoration
    }


# --------------------------------------------------------------------------------------------------
# Histograms and boxplots
# --------------------------------------------------------------------------------------------------


def test_histogram_counts_match_numpy_on_shared_edges(runs):
    edges, counts = plots.histogram_counts(runs, bins=12)
    finite = {k: np.asarray(v, dtype=float)[np.isfinite(v)] for k, v in runs.items()}
    allv = np.concatenate(list(finite.values()))
    assert len(edges) == 13
    assert edges[0] == allv.min() and edges[-1] == allv.max()
    assert list(counts) == ["rainy", "MEMD", "ERL-Net"]
    for name, v in finite.items():
        np.testing.assert_array_equal(counts[name], np.histogram(v, bins=edges)[0])
        assert counts[name].sum() == v.size  # every finite value counted once (inf left out)
    assert counts["ERL-Net"].sum() == 39


def test_histogram_counts_explicit_edges_hand_worked():
    # edges [0, 1, 2, 3]: [0,1) holds 0.5; [1,2) holds 1, 1.5; [2,3] holds 2.5, 3 (last bin closed);
    # 7 is outside and NaN is left out.
    edges, counts = plots.histogram_counts({"a": [0.5, 1.0, 1.5, 2.5, 3.0, 7.0, float("nan")]},
                                           bins=[0, 1, 2, 3])
    np.testing.assert_array_equal(edges, [0, 1, 2, 3])
    np.testing.assert_array_equal(counts["a"], [1, 2, 2])


def test_psnr_histograms_writes_png(tmp_path, runs):
    path = tmp_path / "new" / "sub" / "hist.png"  # parent folders created
    out = plots.psnr_histograms(runs, path, title="Rain100H")
    assert out == str(path)
    _check_png(out)


def test_psnr_histograms_overwrites_atomically(tmp_path, runs):
    path = tmp_path / "hist.png"
    path.write_bytes(b"old")
    plots.psnr_histograms(runs, path)
    _check_png(str(path))


def test_ssim_boxplots_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    data = {name: np.clip(rng.normal(0.8 + 0.02 * i, 0.05, 30), 0, 1)
            for i, name in enumerate(["Lp", "Lp Le", "Lp Le Lt + GB", "+ CA"])}
    data["Lp"][3] = np.nan
    _check_png(plots.ssim_boxplots(data, tmp_path / "box.png", title="SSIM"))


@pytest.mark.parametrize("bad, message", [
    ({}, "empty"),
    ([1.0, 2.0], "mapping"),
    ({"a": []}, "empty"),
    ({"a": [float("nan"), float("nan")]}, "no finite value"),
    ({"a": [1.0, 2.0], "b": [float("inf")]}, "'b'"),
    ({"a": [[1.0, 2.0], [3.0, 4.0]]}, "1-D"),
    ({"a": ["x", "y"]}, "numbers"),
    ({"a": "12"}, "string"),
])
def test_runs_bad_input(tmp_path, bad, message):
    for fn in (plots.psnr_histograms, plots.ssim_boxplots):
        with pytest.raises(ValueError, match=message):
            fn(bad, tmp_path / "x.png")
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.parametrize("bins", [0, [1.0], [2.0, 1.0], "no-such-rule", True])
def test_histogram_bad_bins(bins):
    with pytest.raises(ValueError, match="bin"):
        plots.histogram_counts({"a": [1.0, 2.0, 3.0]}, bins=bins)


# --------------------------------------------------------------------------------------------------
# Improved-proportion bars (ERL-Net Fig. 3)
# --------------------------------------------------------------------------------------------------


def test_improved_proportion_bars_writes_png(tmp_path):
    results = {
        "Rain100H": {"all": 0.75, "hard": 1.0, "easy": 0.5, "num_all": 4, "num_hard": 2, "num_easy": 2,
                     "baseline_mean_psnr": 26.0},  # extra keys are ignored
        "Rain100L": {"all": 0.7, "hard": 0.8, "easy": float("nan")},  # empty subset: "n/a"
        "AGAN-Data": {"all": 0.55, "hard": 0.6, "easy": 0.5},
    }
    w, h = _check_png(plots.improved_proportion_bars(results, tmp_path / "bars.png",
                                                     candidate="ERL-Net", baseline="MEMD"))
    assert w > h  # two panels side by side


@pytest.mark.parametrize("bad, message", [
    ({}, "empty"),
    ({"d": {"all": 0.5, "hard": 0.5}}, "'easy'"),
    ({"d": {"all": 1.5, "hard": 0.5, "easy": 0.5}}, r"\[0, 1\]"),
    ({"d": {"all": "x", "hard": 0.5, "easy": 0.5}}, "number"),
    ({"d": 0.5}, "mapping"),
])
def test_improved_proportion_bars_bad_input(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        plots.improved_proportion_bars(bad, tmp_path / "bars.png")


# --------------------------------------------------------------------------------------------------
# Comparison grid
# --------------------------------------------------------------------------------------------------


def _gradient(h, w, dtype=np.float32):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy / max(h - 1, 1), xx / max(w - 1, 1), 0.5 * np.ones((h, w))], -1)
    return img.astype(np.float32) if dtype == np.float32 else (img * 255).round().astype(np.uint8)


def test_comparison_grid_writes_png(tmp_path):
    clean = _gradient(40, 48)
    rainy = np.clip(clean + 0.4 * (np.arange(48) % 7 == 0)[None, :, None], 0, 1).astype(np.float32)
    rows = [
        ("img0", {"rainy": rainy, "baseline": clean * 0.9, "candidate": _gradient(40, 48, np.uint8),
                  "clean": clean}),
        ("img1", {"rainy": rainy, "clean": clean, "rain map": (rainy - clean).max(-1)}),  # grey map
    ]
    captions = {"img0": {"rainy": 14.2, "baseline": "28.10 dB / 0.912", "candidate": math.inf}}
    w, h = _check_png(plots.comparison_grid(rows, tmp_path / "grid.png", captions=captions,
                                            max_side=64, title="Rain100L"), min_side=80)
    assert w > h


def test_comparison_grid_downscales_large_images(tmp_path):
    big = np.zeros((3000, 4000, 3), np.uint8)  # a 12 MP image
    big[::50] = 255
    big[:, ::70, 1] = 200
    path = plots.comparison_grid([("big", {"rainy": big, "clean": big})], tmp_path / "big.png",
                                 max_side=256)
    w, h = _check_png(path)
    # Two 256-pixel cells plus margins: far from 2 x 4000 pixels.
    assert w <= 2 * 256 + 200 and h <= 256 + 200
    assert os.path.getsize(path) < 1_000_000


@pytest.mark.parametrize("rows, kwargs, message", [
    ([], {}, "empty"),
    ({"a": {}}, {}, "sequence"),
    ([("a", {})], {}, "no images"),
    ([("a", np.zeros((4, 4, 3)))], {}, "pair"),
    ([("a", {"x": np.zeros((4, 4, 4))})], {}, "shape"),
    ([("a", {"x": np.full((4, 4, 3), np.nan, np.float32)})], {}, "NaN"),
    ([("a", {"x": np.zeros((4, 4, 3), np.int32)})], {}, "dtype"),
    ([("a", {"x": np.zeros((0, 4, 3))})], {}, "empty"),
    ([("a", {"x": np.zeros((4, 4, 3))})], {"captions": {"b": {"x": 1.0}}}, "not a row"),
    ([("a", {"x": np.zeros((4, 4, 3))})], {"captions": {"a": {"y": 1.0}}}, "column"),
    ([("a", {"x": np.zeros((4, 4, 3))})], {"max_side": 0}, "max_side"),
])
def test_comparison_grid_bad_input(tmp_path, rows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.comparison_grid(rows, tmp_path / "g.png", **kwargs)


# --------------------------------------------------------------------------------------------------
# Result Indicator Map
# --------------------------------------------------------------------------------------------------


def test_improved_fraction_hand_worked():
    rim = np.array([[1, 0, 1], [1, 0, 0]], bool)
    rain = np.array([[1, 1, 0], [0, 0, 0]], bool)
    assert plots._improved_fraction(rim, None) == 3 / 6
    assert plots._improved_fraction(rim, rain) == 1 / 2       # IoR: rim & rain = 1 pixel of 2
    assert plots._improved_fraction(rim, ~rain) == 2 / 4      # IoB: pixels (0,2), (1,0) of 4
    assert math.isnan(plots._improved_fraction(rim, np.zeros((2, 3), bool)))


def test_overlay_rgb_hand_worked_colours():
    # uint8 image: pixel (0,0) = (255, 0, 0) -> x = (1, 0, 0); pixel (0,1) = (0, 51, 102) -> x =
    # (0, 0.2, 0.4).  alpha = 0.25, improved colour (0, 1, 0), not improved (0, 0, 1):
    #   (0,0) rim=1: 0.75 * (1, 0, 0) + 0.25 * (0, 1, 0) = (0.75, 0.25, 0)
    #   (0,1) rim=0: 0.75 * (0, 0.2, 0.4) + 0.25 * (0, 0, 1) = (0, 0.15, 0.55)
    img = np.array([[[255, 0, 0], [0, 51, 102]]], np.uint8)
    rim = np.array([[1, 0]])
    out = plots.overlay_rgb(img, rim, alpha=0.25, improved_color=(0, 1, 0), not_improved_color=(0, 0, 1))
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    np.testing.assert_allclose(out, [[[0.75, 0.25, 0.0], [0.0, 0.15, 0.55]]], atol=1e-6)
    # With a mask keeping only pixel (0,0), pixel (0,1) becomes the dimmed grey
    # dim * (0.299 * 0 + 0.587 * 0.2 + 0.114 * 0.4) = 0.5 * 0.1630 = 0.0815 in every channel.
    out = plots.overlay_rgb(img, rim, alpha=0.25, improved_color=(0, 1, 0), not_improved_color=(0, 0, 1),
                            mask=np.array([[True, False]]), dim=0.5)
    np.testing.assert_allclose(out, [[[0.75, 0.25, 0.0], [0.0815] * 3]], atol=1e-6)
    # alpha = 0 leaves the image; alpha = 1 paints the colours (float input clipped to [0, 1]).
    fimg = np.array([[[1.5, -0.2, 0.3], [0.1, 0.2, 0.3]]], np.float32)
    np.testing.assert_allclose(plots.overlay_rgb(fimg, rim, alpha=0.0), [[[1.0, 0.0, 0.3], [0.1, 0.2, 0.3]]],
                               atol=1e-6)
    np.testing.assert_allclose(plots.overlay_rgb(fimg, rim, alpha=1.0),
                               [[plots.IMPROVED_COLOR, plots.NOT_IMPROVED_COLOR]], atol=1e-6)


@pytest.mark.parametrize("rim, kwargs, message", [
    (np.ones((3, 4)), {}, "shape"),
    (np.full((4, 4), 0.5), {}, "only 0 and 1"),
    (np.ones((4, 4)), {"alpha": 1.5}, "alpha"),
    (np.ones((4, 4)), {"improved_color": (255, 0, 0)}, "improved_color"),
    (np.ones((4, 4)), {"mask": np.ones((4, 5))}, "mask"),
])
def test_overlay_rgb_bad_input(rim, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.overlay_rgb(np.zeros((4, 4, 3), np.float32), rim, **kwargs)


def test_rim_overlay_writes_png(tmp_path):
    img = _gradient(60, 80)
    rng = np.random.default_rng(2)
    rim = rng.random((60, 80)) < 0.6
    rain = np.zeros((60, 80), bool)
    rain[:, ::9] = True
    w1, _ = _check_png(plots.rim_overlay(img, rim, tmp_path / "rim1.png"), min_side=60)
    w3, _ = _check_png(plots.rim_overlay(img, rim.astype(np.uint8), tmp_path / "rim3.png",
                                         rain_map=rain, title="RIM"), min_side=60)
    assert w3 > w1  # three panels with the rain map
    with pytest.raises(ValueError, match="rain_map"):
        plots.rim_overlay(img, rim, tmp_path / "bad.png", rain_map=np.ones((60, 81)))
    with pytest.raises(ValueError, match="rim"):
        plots.rim_overlay(img, np.ones((10, 10)), tmp_path / "bad.png")


def test_plots_from_threads(tmp_path, runs):
    """No pyplot state: figures can be drawn concurrently."""
    errors = []

    def work(i):
        try:
            plots.psnr_histograms(runs, tmp_path / f"h{i}.png")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(3):
        _check_png(str(tmp_path / f"h{i}.png"))


def test_figures_accept_the_metrics_dissection(tmp_path):
    """The outputs of metrics.improved_proportions / dissect_pair plot as they are."""
    from erl_derain import metrics

    if not hasattr(metrics, "dissect_pair") or not hasattr(metrics, "improved_proportions"):
        pytest.skip("erl_derain.metrics has no ERL-Net dissection helpers")
    clean = _gradient(32, 40)
    rng = np.random.default_rng(3)
    rainy = np.clip(clean + 0.5 * (rng.random((32, 40, 1)) < 0.1), 0, 1).astype(np.float32)
    base = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
    cand = np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1).astype(np.float32)
    d = metrics.dissect_pair(cand, base, rainy, clean)
    _check_png(plots.rim_overlay(clean, d["rim"], tmp_path / "rim.png", rain_map=d["rain_map"]), min_side=32)
    prop = metrics.improved_proportions([20.0, 22.0, 30.0, 32.0], [21.0, 21.0, 31.0, 33.0])
    _check_png(plots.improved_proportion_bars({"d": prop}, tmp_path / "bars.png"))
