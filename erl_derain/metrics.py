"""PSNR and SSIM exactly as single-image deraining papers report them.

Conventions (those of the deraining papers' MATLAB evaluation scripts; the tests check them against the
reference values of real benchmark pairs and against scikit-image):

* **Input images** are ``H x W x 3`` RGB arrays (anything ``np.asarray`` accepts, e.g. an eager
  ``tf.Tensor``) and the dtype alone decides how they are read -- the value range is never inspected:

  - ``uint8``: used as is (0..255);
  - floating point (float16/32/64): always taken to be in ``[0, 1]`` and first quantised as when the
    image is saved as a PNG: ``uint8 = round(clip(x, 0, 1) * 255)`` with halves rounded away from
    zero (MATLAB's ``im2uint8``/``uint8`` convention).  This is "the uint8-rounded image" every
    metric below works on.  A float image in 0..255 is therefore *not* recognised (it would be
    clipped to white): convert such data to ``uint8`` yourself;
  - any other dtype (``uint16``, integers, bool, ...) raises :class:`TypeError`.

* **Y channel**: MATLAB ``rgb2ycbcr`` luma ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with
  ``R, G, B = uint8 / 255``, so ``Y`` lies in ``[16, 235]``.  With ``rounded=True`` (the default)
  ``Y`` is rounded to an integer as MATLAB does for ``uint8`` input -- the convention of the
  MPRNet/Restormer evaluation scripts.  With ``rounded=False`` ``Y`` is kept in double precision,
  which is how PReNet's published figures come out.

* **PSNR**: peak 255, ``10 log10(255^2 / MSE)``; on RGB the MSE runs over all pixels and channels
  jointly.  Identical images give ``inf``.

* **SSIM**: Wang et al. (2004) reference implementation (``ssim_index.m``): 11x11 Gaussian window
  with sigma 1.5 normalised to sum 1 (``fspecial('gaussian', 11, 1.5)``), ``K1 = 0.01``,
  ``K2 = 0.03``, ``L = 255``, 'valid' filtering (no padding, so the SSIM map is
  ``(H - 10) x (W - 10)``), result = mean of the SSIM map, all in float64.  No automatic
  downsampling (unlike the later ``ssim.m``).  RGB SSIM is the mean of the three per-channel SSIMs.

* ``crop_border`` removes that many pixels from each side of both images before anything is
  computed (default 0, as the deraining papers evaluate).

Means over a test set are means of the per-image values (:func:`summarize`,
:class:`MetricAccumulator`).

ERL-Net's dissection (Section 4.3) compares a candidate with a baseline on one test set:

* improved proportions (Fig. 3, :func:`improved_proportions`): the share of images whose candidate
  PSNR is higher than the baseline's, over all images and over the *hard* (baseline PSNR below the
  baseline's mean) and *easy* (the others) subsets;
* the result indicator map RIM (Eq. 6, :func:`result_indicator_map`): on the Y channel, 1 where
  ``|candidate - clean| < |baseline - clean|`` and 0 otherwise (ties count as not improved);
* the binary maps of rain (BMR) and background (BMB) regions (:func:`rain_region_map`):
  ``|Y(rainy) - Y(clean)|`` above its mean over the image is rain, the rest background -- or a
  dataset's own rain mask (Rain100H's ``rainregion`` files) when it has one;
* IoR / IoB (Eq. 7, :func:`intersection_over_region`): the fraction of the rain (background)
  region whose pixels the candidate improved; mIoR / mIoB (Eq. 8) are their means over the images.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

__all__ = [
    "DATA_RANGE",
    "to_uint8",
    "rgb_to_y",
    "psnr",
    "ssim",
    "ssim_map",
    "psnr_y",
    "ssim_y",
    "psnr_rgb",
    "ssim_rgb",
    "evaluate_pair",
    "summarize",
    "MetricAccumulator",
    "result_indicator_map",
    "rain_region_map",
    "intersection_over_region",
    "dissect_pair",
    "improved_proportions",
]

#: Peak value used by every metric here (8-bit images).
DATA_RANGE = 255.0

# MATLAB rgb2ycbcr luma coefficients for R, G, B in [0, 1] and the offset.
# Integer form used for exact arithmetic: Y - 16 = (65481 R + 128553 G + 24966 B) / 255000 with
# R, G, B the uint8 values.
_Y_COEFFS_MILLI = (65481, 128553, 24966)
_Y_DENOM = 255 * 1000
_Y_OFFSET = 16

# SSIM constants of Wang et al. (2004).
_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Round non-negative values half away from zero (MATLAB ``round``), unlike ``np.round``."""
    return np.floor(x + 0.5)


def to_uint8(img) -> np.ndarray:
    """Return ``img`` as the ``H x W x 3`` uint8 image the metrics are computed on.

    ``uint8`` input is returned unchanged (as an ndarray).  Floating-point input is always taken to
    be in ``[0, 1]`` and is quantised like a saved PNG: ``round(clip(x, 0, 1) * 255)``, halves away
    from zero.  Any other dtype raises :class:`TypeError`; a wrong shape or non-finite values raise
    :class:`ValueError`.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(
            f"expected an RGB image of shape (H, W, 3), got an array of shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("image contains NaN or infinite values")
        return _round_half_away(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(
        f"unsupported image dtype {arr.dtype}: pass uint8 (0..255) or floating point in [0, 1]"
    )


def _prepare_pair(pred, target, crop_border: int):
    """Quantise both images to uint8, check their shapes agree and crop ``crop_border`` pixels."""
    a = to_uint8(pred)
    b = to_uint8(target)
    if a.shape != b.shape:
        raise ValueError(
            f"image shapes differ: pred has shape {a.shape}, target has shape {b.shape}"
        )
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)):
        raise TypeError(f"crop_border must be an int, got {crop_border!r}")
    c = int(crop_border)
    if c < 0:
        raise ValueError(f"crop_border must be >= 0, got {c}")
    if c:
        h, w = a.shape[:2]
        if 2 * c >= h or 2 * c >= w:
            raise ValueError(
                f"crop_border={c} removes the whole image of shape {a.shape}"
            )
        a = a[c:h - c, c:w - c]
        b = b[c:h - c, c:w - c]
    return a, b


# --------------------------------------------------------------------------------------------------
# Colour conversion
# --------------------------------------------------------------------------------------------------


def rgb_to_y(img_uint8, *, rounded: bool = True) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` luma of an RGB image, as float64 of shape ``H x W`` in ``[16, 235]``.

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with ``R, G, B = uint8 / 255``.  The input follows
    the module's dtype rule (uint8 as is; floats in [0, 1] are quantised to uint8 first).

    The value is computed exactly in integers, ``Y - 16 = (65481 R + 128553 G + 24966 B) / 255000``
    (R, G, B as 0..255), so the result does not depend on floating-point evaluation order.  This
    matters only for rounding exact ties: 194 of the 2^24 colours have ``Y`` exactly at ``k + 0.5``;
    they are rounded up here (MATLAB's ``round`` rule), whereas double-precision implementations
    resolve them either way depending on how they order the products (a change of 1 in ``Y`` at
    such pixels, far below the precision papers report).

    Args:
      img_uint8: ``H x W x 3`` RGB image.
      rounded: round ``Y`` to the nearest integer (halves away from zero), as MATLAB returns uint8
        for uint8 input (MPRNet/Restormer evaluation; the default).  ``False`` keeps double
        precision (PReNet's published numbers).
    """
    rgb = to_uint8(img_uint8).astype(np.int64)
    cr, cg, cb = _Y_COEFFS_MILLI
    num = cr * rgb[..., 0] + cg * rgb[..., 1] + cb * rgb[..., 2]  # = 255000 * (Y - 16)
    if rounded:
        # floor(num / 255000 + 1/2) in exact integer arithmetic (num >= 0).
        return (_Y_OFFSET + (2 * num + _Y_DENOM) // (2 * _Y_DENOM)).astype(np.float64)
    return num / float(_Y_DENOM) + _Y_OFFSET


# --------------------------------------------------------------------------------------------------
# Core metrics on single-channel float arrays
# --------------------------------------------------------------------------------------------------


def psnr(a, b, *, data_range: float = DATA_RANGE) -> float:
    """PSNR in dB between two equally shaped arrays: ``10 log10(data_range^2 / MSE)``.

    The MSE is taken over every element (pixels and channels jointly).  Identical arrays give
    ``inf``.  No dtype conversion is applied: pass values on the ``data_range`` scale.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"array shapes differ: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def _gaussian_kernel_1d(size: int = _SSIM_WIN, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is exactly ``fspecial('gaussian', size, sigma)``."""
    r = (size - 1) / 2.0
    t = np.arange(size, dtype=np.float64) - r
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D float64 array with the symmetric 1-D kernel ``g``.

    Equivalent to MATLAB ``filter2(g' * g, x, 'valid')``: the output shrinks by ``len(g) - 1`` in
    each dimension and no padding is ever used.
    """
    n = g.size
    h, w = x.shape
    rows = g[0] * x[0:h - n + 1, :]
    for k in range(1, n):
        rows = rows + g[k] * x[k:h - n + 1 + k, :]
    out = g[0] * rows[:, 0:w - n + 1]
    for k in range(1, n):
        out = out + g[k] * rows[:, k:w - n + 1 + k]
    return out


def ssim_map(a, b, *, data_range: float = DATA_RANGE) -> np.ndarray:
    """SSIM map (Wang et al. 2004) of two 2-D arrays, shape ``(H - 10) x (W - 10)``, float64.

    11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, 'valid' filtering.  Both
    arrays must be at least 11x11.  No dtype conversion: pass values on the ``data_range`` scale.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"array shapes differ: {x.shape} vs {y.shape}")
    if x.ndim != 2:
        raise ValueError(f"ssim_map expects 2-D arrays, got shape {x.shape}")
    if x.shape[0] < _SSIM_WIN or x.shape[1] < _SSIM_WIN:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN} pixels "
            f"(after crop_border), got {x.shape[0]}x{x.shape[1]}"
        )
    g = _gaussian_kernel_1d()
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2

    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    mu_xx = mu_x * mu_x
    mu_yy = mu_y * mu_y
    mu_xy = mu_x * mu_y
    # Population (biased) local (co)variances, as in ssim_index.m.
    var_x = _filter_valid(x * x, g) - mu_xx
    var_y = _filter_valid(y * y, g) - mu_yy
    cov_xy = _filter_valid(x * y, g) - mu_xy

    num = (2.0 * mu_xy + c1) * (2.0 * cov_xy + c2)
    den = (mu_xx + mu_yy + c1) * (var_x + var_y + c2)
    return num / den


def ssim(a, b, *, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM of two 2-D arrays (mean of :func:`ssim_map`)."""
    return float(np.mean(ssim_map(a, b, data_range=data_range)))


# --------------------------------------------------------------------------------------------------
# Public image metrics
# --------------------------------------------------------------------------------------------------


def psnr_y(pred, target, *, rounded: bool = True, crop_border: int = 0) -> float:
    """PSNR (dB, peak 255) on the MATLAB Y channel of two RGB images; ``inf`` if the Y's agree."""
    a, b = _prepare_pair(pred, target, crop_border)
    return psnr(rgb_to_y(a, rounded=rounded), rgb_to_y(b, rounded=rounded))


def ssim_y(pred, target, *, rounded: bool = True, crop_border: int = 0) -> float:
    """SSIM (11x11 Gaussian, sigma 1.5, 'valid', L = 255) on the MATLAB Y channel."""
    a, b = _prepare_pair(pred, target, crop_border)
    return ssim(rgb_to_y(a, rounded=rounded), rgb_to_y(b, rounded=rounded))


def psnr_rgb(pred, target, *, crop_border: int = 0) -> float:
    """PSNR (dB, peak 255) over all pixels and the three channels jointly of the uint8 images."""
    a, b = _prepare_pair(pred, target, crop_border)
    return psnr(a, b)


def ssim_rgb(pred, target, *, crop_border: int = 0) -> float:
    """Mean of the three per-channel SSIMs of the uint8 images."""
    a, b = _prepare_pair(pred, target, crop_border)
    return float(np.mean([ssim(a[..., c], b[..., c]) for c in range(3)]))


def evaluate_pair(pred, target, *, rounded: bool = True, crop_border: int = 0) -> Dict[str, float]:
    """All four metrics of one image pair.

    Returns ``{'psnr_y', 'ssim_y', 'psnr_rgb', 'ssim_rgb'}`` as Python floats; ``rounded`` only
    affects the Y metrics.
    """
    a, b = _prepare_pair(pred, target, crop_border)
    ya = rgb_to_y(a, rounded=rounded)
    yb = rgb_to_y(b, rounded=rounded)
    return {
        "psnr_y": psnr(ya, yb),
        "ssim_y": ssim(ya, yb),
        "psnr_rgb": psnr(a, b),
        "ssim_rgb": float(np.mean([ssim(a[..., c], b[..., c]) for c in range(3)])),
    }


# --------------------------------------------------------------------------------------------------
# Aggregation over a test set
# --------------------------------------------------------------------------------------------------


def summarize(rows: Iterable[Mapping[str, float]]) -> Dict[str, float]:
    """Average per-image metric dicts (e.g. from :func:`evaluate_pair`) over a test set.

    For every key the mean is taken over the *finite* values only, so an image whose prediction is
    identical to its target (PSNR ``inf``) does not turn the mean PSNR into ``inf``; such images are
    counted instead.  The result holds:

    * ``num_images``: number of rows;
    * ``<key>``: mean of the finite values of that key (``nan`` if there are none);
    * ``<key>_num_inf``: how many values of that key were infinite -- always present for keys
      starting with ``psnr`` (so the schema is stable) and for any other key that had one.

    Keys missing from some rows are averaged over the rows that have them.  Non-numeric values
    (e.g. an image name) are ignored.
    """
    rows = list(rows)
    values: Dict[str, List[float]] = {}
    for row in rows:
        for key, val in row.items():
            if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
                continue
            values.setdefault(key, []).append(float(val))
    out: Dict[str, float] = {"num_images": len(rows)}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        out[key] = float(finite.mean()) if finite.size else math.nan
        n_inf = int(np.isinf(arr).sum())
        if n_inf or key.startswith("psnr"):
            out[f"{key}_num_inf"] = n_inf
    return out


class MetricAccumulator:
    """Collects per-image metrics and averages them with :func:`summarize`.

    Example::

        acc = MetricAccumulator(rounded=True)
        for name, pred, target in pairs:
            acc.add(pred, target, name=name)
        print(acc.result())      # {'num_images': ..., 'psnr_y': ..., 'psnr_y_num_inf': ..., ...}
        acc.rows                 # per-image dicts, each with its 'name' when one was given
    """

    def __init__(self, *, rounded: bool = True, crop_border: int = 0):
        self.rounded = rounded
        self.crop_border = crop_border
        self.rows: List[Dict[str, object]] = []

    def add(self, pred, target, *, name: Optional[str] = None) -> Dict[str, float]:
        """Evaluate one pair, store and return its metrics."""
        metrics = evaluate_pair(pred, target, rounded=self.rounded, crop_border=self.crop_border)
        self.add_row(metrics, name=name)
        return metrics

    def add_row(self, metrics: Mapping[str, float], *, name: Optional[str] = None) -> None:
        """Store an already computed per-image metric dict."""
        row: Dict[str, object] = dict(metrics)
        if name is not None:
            row["name"] = name
        self.rows.append(row)

    def result(self) -> Dict[str, float]:
        """Means over the images added so far (see :func:`summarize`)."""
        return summarize(self.rows)

    def reset(self) -> None:
        self.rows = []

    def __len__(self) -> int:
        return len(self.rows)


# --------------------------------------------------------------------------------------------------
# ERL-Net's dissection (Section 4.3): improved proportions, RIM, IoR/IoB
# --------------------------------------------------------------------------------------------------


def _y_of(img, rounded: bool) -> np.ndarray:
    return rgb_to_y(to_uint8(img), rounded=rounded)


def result_indicator_map(candidate, baseline, clean, *, rounded: bool = True) -> np.ndarray:
    """ERL-Net's RIM (Eq. 6): boolean ``H x W``, True where the candidate's Y is strictly closer to
    the clean Y than the baseline's (``|Yc - Yg| < |Yb - Yg|``); ties are not improvements."""
    yc, yb, yg = (_y_of(x, rounded) for x in (candidate, baseline, clean))
    if not yc.shape == yb.shape == yg.shape:
        raise ValueError(f"image shapes differ: candidate {yc.shape}, baseline {yb.shape}, clean {yg.shape}")
    return np.abs(yc - yg) < np.abs(yb - yg)


def rain_region_map(rainy, clean, *, rounded: bool = True) -> np.ndarray:
    """Binary map of rain regions (BMR, boolean ``H x W``): ``|Y(rainy) - Y(clean)|`` above its mean
    over the image (ERL-Net's threshold, in place of the fixed 30 of JORDER). The background map
    (BMB) is its complement."""
    yr, yg = _y_of(rainy, rounded), _y_of(clean, rounded)
    if yr.shape != yg.shape:
        raise ValueError(f"image shapes differ: rainy {yr.shape}, clean {yg.shape}")
    diff = np.abs(yr - yg)
    return diff > diff.mean()


def intersection_over_region(rim, region) -> float:
    """Eq. 7: ``sum(region AND rim) / sum(region)`` for boolean maps; NaN for an empty region."""
    rim, region = np.asarray(rim, bool), np.asarray(region, bool)
    if rim.shape != region.shape:
        raise ValueError(f"map shapes differ: rim {rim.shape}, region {region.shape}")
    size = int(region.sum())
    return float(np.logical_and(rim, region).sum() / size) if size else math.nan


def dissect_pair(candidate, baseline, rainy, clean, *, rain_mask=None, rounded: bool = True) -> Dict[str, object]:
    """RIM, rain/background maps and IoR/IoB of one test image.

    ``rain_mask``: the dataset's own rain-region map (any non-zero value is rain) used instead of the
    thresholded difference. Returns ``{'rim', 'rain_map', 'ior', 'iob', 'improved_pixels'}`` with
    the maps as boolean arrays.
    """
    rim = result_indicator_map(candidate, baseline, clean, rounded=rounded)
    if rain_mask is not None:
        rain = np.asarray(rain_mask)
        rain = (rain[..., 0] if rain.ndim == 3 else rain) != 0
        if rain.shape != rim.shape:
            raise ValueError(f"rain mask shape {rain.shape} differs from the image's {rim.shape}")
    else:
        rain = rain_region_map(rainy, clean, rounded=rounded)
    return {"rim": rim, "rain_map": rain, "ior": intersection_over_region(rim, rain),
            "iob": intersection_over_region(rim, ~rain), "improved_pixels": float(rim.mean())}


def improved_proportions(baseline_psnr, candidate_psnr) -> Dict[str, float]:
    """ERL-Net Fig. 3: share of images the candidate improves (PSNR strictly higher than the
    baseline's), over all images and over the hard and easy subsets.

    Hard images have a baseline PSNR below the mean of the baseline's PSNRs (finite values; an
    infinite PSNR is easy); the others are easy. A proportion over an empty subset is NaN.
    Returns ``all``, ``hard``, ``easy`` and the counts ``num_*`` / ``num_*_improved``.
    """
    base = np.asarray(baseline_psnr, np.float64)
    cand = np.asarray(candidate_psnr, np.float64)
    if base.shape != cand.shape or base.ndim != 1 or not base.size:
        raise ValueError(f"expected two equally long non-empty lists of PSNRs, got shapes {base.shape} and {cand.shape}")
    if np.isnan(base).any() or np.isnan(cand).any():
        raise ValueError("PSNR lists contain NaN")
    finite = base[np.isfinite(base)]
    mean = float(finite.mean()) if finite.size else math.inf
    hard = base < mean
    improved = cand > base
    out: Dict[str, float] = {"baseline_mean_psnr": mean}
    for key, subset in (("all", np.ones_like(hard)), ("hard", hard), ("easy", ~hard)):
        n, k = int(subset.sum()), int((improved & subset).sum())
        out[key] = k / n if n else math.nan
        out[f"num_{key}"] = n
        out[f"num_{key}_improved"] = k
    return out
