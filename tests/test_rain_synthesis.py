"""Rain synthesis (intensity-aware paper's recipe) and image I/O conversions."""

from dataclasses import asdict

import cv2
import numpy as np
import pytest

from erl_derain.data import rain_synthesis as rs
from erl_derain.data.image_io import load_rgb, save_rgb


def grey(h=96, w=96, v=0.3):
    return np.full((h, w, 3), v, np.float32)


def streak_angle(layer: np.ndarray) -> float:
    """Dominant streak direction in degrees from vertical (positive: top to the right, "/"), as the
    principal axis of the layer's autocorrelation peak (independent of how streaks are drawn)."""
    x = layer.astype(np.float64) - layer.mean()
    ac = np.fft.fftshift(np.real(np.fft.ifft2(np.abs(np.fft.fft2(x)) ** 2)))
    c = np.array(ac.shape) // 2
    win = ac[c[0] - 20:c[0] + 21, c[1] - 20:c[1] + 21]
    win = np.where(win > 0.3 * win.max(), win, 0.0)
    ys, xs = np.mgrid[-20:21, -20:21]
    cov = np.cov(np.stack([xs.ravel(), ys.ravel()]), aweights=win.ravel())
    d = np.linalg.eigh(cov)[1][:, -1]
    if d[1] > 0:  # point upwards (y grows downwards)
        d = -d
    return float(np.degrees(np.arctan2(d[0], -d[1])))


def test_deterministic_for_a_seed():
    a, ra = rs.synthesize_rain(grey(), density=0.01, seed=3)
    b, rb = rs.synthesize_rain(grey(), density=0.01, seed=3)
    c, _ = rs.synthesize_rain(grey(), density=0.01, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(a, grey() + ra, atol=1e-6)


def test_range_clipping_and_no_rain_cases():
    ones = np.ones((64, 64, 3), np.float32)
    rainy, _ = rs.synthesize_rain(ones, density=0.05, intensity=0.9, seed=0)
    np.testing.assert_array_equal(rainy, ones)
    rainy, rain = rs.synthesize_rain(grey(), density=0.05, intensity=0.0, seed=0)
    np.testing.assert_array_equal(rainy, grey())
    rainy, _ = rs.synthesize_rain(grey(), density=0.0, intensity=0.8, seed=0)
    np.testing.assert_array_equal(rainy, grey())
    rainy, _ = rs.synthesize_rain(grey(v=0.0), density=0.05, intensity=5.0, layers=3, seed=0)
    assert rainy.min() >= 0.0 and rainy.max() <= 1.0 and rainy.max() == 1.0
    # Rain is additive and achromatic: it only brightens, equally in R, G and B.
    rainy, rain = rs.synthesize_rain(grey(), density=0.01, seed=1)
    assert (rain >= -1e-7).all()
    np.testing.assert_allclose(rain[..., 0], rain[..., 2], atol=1e-6)


@pytest.mark.parametrize("angle", rs.DIRECTIONS)
def test_streak_direction(angle):
    _, rain = rs.synthesize_rain(grey(160, 160, 0.0), density=0.004, length=31, intensity=0.5, angle=angle,
                                 blur_sigma=0.4, seed=5)
    assert abs(streak_angle(rain[..., 0]) - angle) < 4.0


def test_motion_kernel_is_a_line_of_the_given_length():
    k = rs.motion_kernel(15, 0.0)
    assert k.shape == (15, 15) and k.max() == 1.0
    cols = np.nonzero(k.sum(0))[0]
    rows = np.nonzero(k.sum(1))[0]
    assert list(cols) == [7] and len(rows) == 15  # one vertical column through the centre
    k30 = rs.motion_kernel(21, 30.0)
    ys, xs = np.nonzero(k30 > 0.5)
    # top of the line (small y) is to the right (large x) for a positive angle
    assert np.corrcoef(xs, ys)[0, 1] < -0.9


def test_density_thickness_and_length_increase_the_rain():
    means = [rs.synthesize_rain(grey(128, 128, 0.0), density=d, seed=7, angle=0.0, blur_sigma=0.4)[1].mean()
             for d in (0.002, 0.006, 0.02)]
    assert means[0] < means[1] < means[2]
    thick = [rs.synthesize_rain(grey(128, 128, 0.0), density=0.004, seed=7, angle=0.0, blur_sigma=s)[1].mean()
             for s in (0.2, 0.6, 1.0)]
    assert thick[0] < thick[1] < thick[2]


def test_accumulation_model_worked_value():
    clean = grey(64, 64, 0.2)
    _, s = rs.synthesize_rain(clean, density=0.01, intensity=0.3, angle=0.0, blur_sigma=0.4, seed=11)
    assert (clean + s).max() < 1.0  # no clipping in the reference
    veiled, _ = rs.synthesize_rain(clean, density=0.01, intensity=0.3, angle=0.0, blur_sigma=0.4, seed=11,
                                   accumulation=True, alpha=0.8, atmospheric_light=0.9)
    # O = alpha (B + S) + (1 - alpha) A
    np.testing.assert_allclose(veiled, 0.8 * (clean + s) + 0.2 * 0.9, atol=1e-6)
    # On a textured image the veil lowers contrast.
    rng = np.random.default_rng(0)
    tex = rng.random((64, 64, 3)).astype(np.float32) * 0.6
    plain, _ = rs.synthesize_rain(tex, density=0.0, seed=1)
    veil, _ = rs.synthesize_rain(tex, density=0.0, seed=1, accumulation=True)
    assert veil.std() < plain.std()


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="angle"):
        rs.synthesize_rain(grey(), angle=20.0)
    with pytest.raises(ValueError, match="HxWx3"):
        rs.synthesize_rain(np.zeros((8, 8)))


def test_rain_params_sample_light_to_heavy():
    rng = np.random.default_rng(0)
    light = [rs.RainParams.sample(rng, 0.0) for _ in range(20)]
    heavy = [rs.RainParams.sample(rng, 1.0) for _ in range(20)]
    assert max(p.density for p in light) < min(p.density for p in heavy)
    assert all(p.layers == 1 and not p.accumulation for p in light)
    assert all(p.layers == 3 and p.accumulation for p in heavy)
    assert {p.angle for p in light + heavy} <= set(rs.DIRECTIONS)
    assert {p.blur_sigma for p in light + heavy} <= set(rs.BLUR_SIGMAS)


def test_synthesize_folder_pairs_and_errors(tmp_path):
    src = tmp_path / "clean_in"
    src.mkdir()
    save_rgb(str(src / "a.png"), grey(40, 50))
    cv2.imwrite(str(src / "b.JPG"), np.full((30, 20, 3), 90, np.uint8))
    pairs = rs.synthesize_folder(str(src), str(tmp_path / "out"), renders_per_image=2, seed=1, density=0.02)
    names = sorted(p.name for p in (tmp_path / "out" / "rainy").iterdir())
    assert names == ["a_0.png", "a_1.png", "b_0.png", "b_1.png"]
    assert names == sorted(p.name for p in (tmp_path / "out" / "clean").iterdir())
    assert len(pairs) == 4
    assert load_rgb(str(tmp_path / "out" / "rainy" / "b_1.png")).shape == (30, 20, 3)
    (src / "c.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="c.png"):
        rs.synthesize_folder(str(src), str(tmp_path / "out2"))
    with pytest.raises(ValueError, match="no such folder"):
        rs.synthesize_folder(str(tmp_path / "missing"), str(tmp_path / "out3"))


def test_load_rgb_conversions(tmp_path):
    g = np.array([[0, 51], [102, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), g)
    out = load_rgb(str(tmp_path / "g.png"))
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 1], g / 255.0, atol=1e-7)
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # fully transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    np.testing.assert_allclose(load_rgb(str(tmp_path / "rgba.png"))[0, 0], np.array([30, 20, 10]) / 255.0, atol=1e-7)
    deep = np.full((3, 3, 3), 65535, np.uint16)
    deep[..., 2] = 32768  # red channel in BGR order
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_allclose(load_rgb(str(tmp_path / "deep.png"))[1, 1], [32768 / 65535, 1, 1], atol=1e-7)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        load_rgb(str(tmp_path / "empty.png"))


def test_synthesize_folder_renders_are_stable_per_photo(tmp_path):
    src = tmp_path / "clean_in"
    src.mkdir()
    save_rgb(str(src / "b.png"), grey(48, 48, 0.4))
    rs.synthesize_folder(str(src), str(tmp_path / "o1"), seed=3, levels=(0.0, 1.0))
    # Another photo that sorts first does not change b's rendering; another seed does.
    save_rgb(str(src / "a.png"), grey(48, 48, 0.2))
    rs.synthesize_folder(str(src), str(tmp_path / "o2"), seed=3, levels=(0.0, 1.0))
    rs.synthesize_folder(str(src), str(tmp_path / "o3"), seed=4, levels=(0.0, 1.0))
    b1, b2, b3 = (load_rgb(str(tmp_path / o / "rainy" / "b.png")) for o in ("o1", "o2", "o3"))
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(b1, b3)
    # Explicit settings override the sampled ones: no rain at zero intensity.
    rs.synthesize_folder(str(src), str(tmp_path / "o4"), seed=3, levels=(0.0, 0.3), intensity=0.0)
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "o4" / "rainy" / "b.png")),
                                  load_rgb(str(tmp_path / "o4" / "clean" / "b.png")))
    save_rgb(str(src / "a.jpg"), grey(48, 48, 0.2))  # same stem as a.png: outputs would collide
    with pytest.raises(ValueError, match="same name stem"):
        rs.synthesize_folder(str(src), str(tmp_path / "o5"))


def test_long_style_gives_long_soft_additive_streaks():
    rng = np.random.default_rng(1)
    light = [rs.RainParams.sample(rng, 0.0, "long") for _ in range(20)]
    heavy = [rs.RainParams.sample(rng, 1.0, "long") for _ in range(20)]
    assert min(p.length for p in light + heavy) >= 40  # vs 10-40 px for the paper's streaks
    assert max(p.density for p in light) < min(p.density for p in heavy)
    assert not any(p.accumulation for p in light + heavy)
    assert {p.blur_sigma for p in light + heavy} <= set(rs.LONG_BLUR_SIGMAS)
    # Wider streaks are dimmer: intensity * sigma is drawn from the same range for every sigma.
    assert all(0.04 <= p.intensity * p.blur_sigma <= 0.1 for p in light)
    clean = grey(96, 96, 0.3)
    rainy, rain = rs.synthesize_rain(clean, rng=rng, **asdict(heavy[0]))
    assert (rain >= 0).all() and rain.mean() > 0.01
    # a streak spans most of its length: the rain's vertical autocorrelation (angle 0) is high
    vertical = rs.synthesize_rain(clean, seed=3, **{**asdict(heavy[0]), "angle": 0.0, "layers": 1})[1][..., 0]
    a, b = vertical[:-20] - vertical.mean(), vertical[20:] - vertical.mean()
    assert (a * b).mean() / vertical.var() > 0.5
    with pytest.raises(ValueError, match="style"):
        rs.RainParams.sample(rng, 0.5, "drizzle")
    with pytest.raises(ValueError, match="blur_sigma"):
        rs.synthesize_rain(clean, blur_sigma=3.5)


def test_mean_streak_brightness_matches_a_rendered_layer():
    """The expected mean of a streak layer, worked by hand: seed rate x mean seed brightness (0.75) x
    the mass of one blurred seed scaled to peak 1 (about 2 pi sigma^2 for a wide Gaussian) x the line's
    length (an anti-aliased line of peak 1 sums to about its length)."""
    for sigma, length in ((1.0, 120.0), (1.5, 200.0)):
        by_hand = 0.002 * 0.75 * (2 * np.pi * sigma**2) * length
        assert rs.mean_streak_brightness(0.002, length, 0.0, sigma) == pytest.approx(by_hand, rel=0.1)
        layer = rs.streak_layer((512, 512), density=0.002, length=length, angle=0.0, blur_sigma=sigma,
                                rng=np.random.default_rng(0))
        assert layer.mean() == pytest.approx(by_hand, rel=0.1)


def test_haze_is_smooth_additive_and_of_the_given_mean():
    clean = grey(64, 96, 0.3)
    rainy, rain = rs.synthesize_rain(clean, intensity=0.0, haze=0.1, seed=4)
    assert rain.mean() == pytest.approx(0.1, abs=1e-4)  # a linear ramp over a rectangle has mean 0
    assert np.allclose(rain[..., 0], rain[..., 1]) and np.allclose(rain[..., 0], rain[..., 2])  # achromatic
    assert rain.min() >= 0.1 * 0.2 - 1e-6 and rain.max() <= 0.1 * 1.8 + 1e-6
    # linear in x and y: second differences vanish
    assert np.abs(np.diff(rain[..., 0], 2, axis=0)).max() < 1e-5
    assert np.abs(np.diff(rain[..., 0], 2, axis=1)).max() < 1e-5
    # haze=0 draws nothing: the rest of the rendering is unchanged
    a = rs.synthesize_rain(clean, density=0.01, seed=5)[0]
    b = rs.synthesize_rain(clean, density=0.01, haze=0.0, seed=5)[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="haze"):
        rs.synthesize_rain(clean, haze=-0.1)


def test_modulation_varies_the_streaks_smoothly_over_the_image():
    """With modulation m the streak layer is multiplied by max(0, 1 + m f), f a smooth field in [-1, 1]:
    the rain of one rendering divided by the same rendering without modulation (same seeds) is that
    factor, which spans [1 - m, 1 + m] about and changes slowly from pixel to pixel."""
    clean = grey(128, 192, 0.0)
    kwargs = dict(density=0.05, length=15.0, intensity=0.02, angle=0.0, blur_sigma=1.0)
    plain = rs.synthesize_rain(clean, seed=6, **kwargs)[1][..., 0]
    rng = np.random.default_rng(6)
    modulated = rs.synthesize_rain(clean, rng=rng, modulation=1.0, **kwargs)[1][..., 0]
    seen = plain > 0.05
    factor = modulated[seen] / plain[seen]
    assert factor.min() < 0.4 and factor.max() > 1.5 and factor.max() <= 2.0 + 1e-4
    full = np.full(plain.shape, np.nan, np.float32)
    full[seen] = modulated[seen] / plain[seen]
    steps = np.abs(np.diff(full, axis=1))
    assert np.nanmax(steps) < 0.1  # smooth: a few percent per pixel at most
    np.testing.assert_array_equal(rs.synthesize_rain(clean, seed=6, modulation=0.0, **kwargs)[1][..., 0], plain)
    with pytest.raises(ValueError, match="modulation"):
        rs.synthesize_rain(clean, modulation=1.5)


def test_dense_style_is_additive_and_brightens_with_the_level():
    """The dense style aims at a mean added brightness of (0.03 + 0.19 level) x [0.6, 1.2]: from light
    to heavy the rain's mean rises from a few to tens of grey levels (on a mid-grey photo, where
    nothing clips), and it is never negative."""
    rng = np.random.default_rng(2)
    clean = grey(256, 256, 0.3)
    means = {}
    for level in (0.0, 1.0):
        vals = []
        for _ in range(6):
            p = rs.RainParams.sample(rng, level, "dense")
            assert p.length >= 40 and p.layers == 1 and not p.accumulation and p.haze > 0 and p.modulation >= 0.5
            assert p.blur_sigma in rs.DENSE_BLUR_SIGMAS
            rain = rs.synthesize_rain(clean, rng=rng, **asdict(p))[1]
            assert (rain >= 0).all()
            vals.append(rain.mean() * 255)
        means[level] = np.mean(vals)
    assert 2 <= means[0.0] <= 15
    assert 25 <= means[1.0] <= 70


def test_wide_style_has_separate_bright_streaks_when_light_and_dimmer_drops_when_heavy():
    """The wide style (SIRR's lighter Photoshop rain): at level 0 about one streak per 1000-1500 pixels,
    each 4-7 px wide and peaking at 0.1-0.25 times a seed's brightness (seeds 0.5-1, so 13-64 grey
    levels), with a mean added brightness of 0.012 x [0.6, 1.2] (1.8-3.7 levels); at level 1 the mean is
    (0.012 + 0.07) x [0.6, 1.2] unless the density cap binds, and single streaks are dimmer. Peaks and
    widths are read from the rendered rain by connected components, not from the sampled settings."""
    rng = np.random.default_rng(4)
    clean = grey(320, 320, 0.3)
    stats = {}
    for level in (0.0, 1.0):
        means, peaks = [], []
        for _ in range(5):
            p = rs.RainParams.sample(rng, level, "wide")
            assert p.blur_sigma in rs.WIDE_BLUR_SIGMAS and 8 <= p.length <= 45 and p.haze == 0
            assert p.layers == 1 and not p.accumulation and p.density <= 0.02
            rain = rs.synthesize_rain(clean, rng=rng, **asdict(p))[1][..., 0]
            assert (rain >= 0).all()
            means.append(rain.mean() * 255)
            if level == 0.0:
                count, labels, st, _ = cv2.connectedComponentsWithStats((rain > 0.01).astype(np.uint8))
                big = [k for k in range(1, count) if st[k, cv2.CC_STAT_AREA] >= 10]
                assert 320 * 320 / 2500 <= len(big) <= 320 * 320 / 500  # a streak per 500-2500 pixels
                peaks += [rain[labels == k].max() * 255 for k in big]
        stats[level] = (np.mean(means), np.median(peaks) if peaks else None)
    assert 1.2 <= stats[0.0][0] <= 4.5
    assert 10 <= stats[0.0][1] <= 70
    assert 6 <= stats[1.0][0] <= 30 and stats[1.0][0] > 2 * stats[0.0][0]


def test_haze_gradient_sets_how_far_the_haze_runs_across_the_image():
    """With no streaks, the rain is haze * (1 + g * ramp), the ramp running linearly from -1 to 1: for
    g = 1 it goes from 0 on one side to twice the haze on the other, its mean the haze; for g = 0 it is flat."""
    clean = grey(64, 96, 0.3)
    rain = rs.synthesize_rain(clean, density=0.0, intensity=0.0, haze=0.1, haze_gradient=(1.0, 1.0), seed=2)[1]
    assert rain.min() == pytest.approx(0.0, abs=1e-6) and rain.max() == pytest.approx(0.2, abs=1e-6)
    assert rain.mean() == pytest.approx(0.1, abs=1e-3)
    flat = rs.synthesize_rain(clean, density=0.0, intensity=0.0, haze=0.1, haze_gradient=(0.0, 0.0), seed=2)[1]
    np.testing.assert_allclose(flat, 0.1, atol=1e-6)
    with pytest.raises(ValueError, match="haze_gradient"):
        rs.synthesize_rain(clean, haze=0.1, haze_gradient=(0.5, 1.5))


def test_veil_style_puts_most_of_the_rain_in_a_veil_that_runs_across_the_image():
    """The veil style (SIRR's heaviest images): mean added brightness (0.05 + 0.2 level) x [0.6, 1.2],
    i.e. 8-37 grey levels at level 0 and 38-77 at level 1; measured from the render, the smooth floor under
    the streaks (local minimum over 15x15, then blurred) carries most of it and runs from well below its
    mean on one side to well above it on the other, as on SIRR's heavy pairs (floor shares 0.55-0.86 there)."""
    rng = np.random.default_rng(7)
    clean = grey(240, 320, 0.3)
    for level, (lo, hi) in ((0.0, (7, 40)), (1.0, (35, 80))):
        for _ in range(3):
            p = rs.RainParams.sample(rng, level, "veil")
            assert p.haze > 0 and p.haze_gradient == (0.6, 1.0) and p.blur_sigma in rs.DENSE_BLUR_SIGMAS
            rain = rs.synthesize_rain(clean, rng=rng, **asdict(p))[1][..., 0] * 255
            assert (rain >= 0).all() and lo <= rain.mean() <= hi
            floor = cv2.GaussianBlur(cv2.erode(rain, np.ones((15, 15), np.uint8)), (0, 0), 8)
            assert floor.mean() / rain.mean() >= 0.4
            p5, p95 = np.percentile(floor, [5, 95])
            assert p5 < 0.7 * floor.mean() and p95 > 1.3 * floor.mean()
