"""No-reference image quality: NIQE and BRISQUE, as deraining papers report them on real rain.

Both are written here from their papers, with the published models of their authors' MATLAB
releases (``erl_derain/quality_models/``, README.md there: sources, licence notice, conversion and
checksums); nothing is downloaded. Lower is better for both.

* **NIQE** (Mittal, Soundararajan & Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
  IEEE SPL 2013): the image (grey; by default the MATLAB ``rgb2ycbcr`` luma, rounded, as BasicSR's
  and most deraining papers' scripts) is cropped to whole 96x96 blocks; at two scales (the second
  MATLAB-``imresize``d by 0.5, bicubic with antialiasing, blocks of 48x48) the MSCN coefficients
  ``(I - mu) / (sigma + 1)`` (7x7 Gaussian, sigma 7/6, replicated borders) are fitted per block with an
  asymmetric generalised Gaussian (AGGD), and so are the products of each coefficient with its
  right, lower, lower-right and lower-left neighbours (18 features per scale). The quality is the
  distance ``sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d))`` between the multivariate
  Gaussian of the image's 36-dimensional block features (mean over the blocks, NaN-aware as
  MATLAB's ``nanmean`` / ``nancov``) and the pristine model (``niqe_pristine.npz``: the release's
  ``modelparameters.mat``, fitted on 125 pristine photos).
* **BRISQUE** (Mittal, Moorthy & Bovik, "No-Reference Image Quality Assessment in the Spatial
  Domain", IEEE TIP 2012): the same 2 x 18 features over the whole image (MSCN with zero-padded
  filtering, as the release's ``filter2``; the first pair of each scale from a symmetric GGD fit),
  scaled with the release's LibSVM range file to [-1, 1] and scored by its epsilon-SVR (RBF kernel,
  gamma 0.05, 774 support vectors, trained on the whole LIVE database; ``brisque_live.npz``).
  Typically 0 (best) .. 100 (worst); the grey image is MATLAB's ``rgb2gray`` (rounded) as the release.

Reference checks (``tests/test_no_reference_quality.py``): NIQE of Set14's ``baboon`` (first 492
columns, the image BasicSR ships as ``tests/data/baboon.png``) against MATLAB R2021a's 5.72957338
(recorded in BasicSR's ``basicsr/metrics/niqe.py``); BRISQUE's scaling and SVR against the
feature file (``test_ind``), scaled file (``test_ind_scaled``) and score (``output``: 19.9357) that
the authors' release ships as the result of its own run.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Mapping

import numpy as np
from scipy import ndimage, special

from erl_derain import metrics

MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quality_models")
NIQE_BLOCK = 96
METRICS = ("niqe", "brisque")

# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]).
_GRAY_COEFFS = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]
# The grid of GGD / AGGD shape parameters both releases search (MATLAB 0.2:0.001:10).
_SHAPES = 0.2 + 0.001 * np.arange(9801)


# -- grey images --------------------------------------------------------------------------------------

def _as_uint8_rgb_or_grey(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        if arr.dtype == np.uint8:
            return arr
        if np.issubdtype(arr.dtype, np.floating):
            return metrics.to_uint8(np.repeat(arr[..., None], 3, axis=-1))[..., 0]
        raise TypeError(f"unsupported image dtype {arr.dtype}: pass uint8 (0..255) or floating point in [0, 1]")
    return metrics.to_uint8(arr)


def grey(image, convert: str = "y") -> np.ndarray:
    """The float64 grey image (0..255 scale) the metrics see: ``"y"`` MATLAB ``rgb2ycbcr`` luma rounded
    to integers (16..235), ``"gray"`` MATLAB ``rgb2gray`` of the uint8 image, rounded. Floats are taken
    as [0, 1] and quantised to uint8 first (as a saved PNG); a 2-D image is already grey."""
    arr = _as_uint8_rgb_or_grey(image)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if convert == "y":
        return metrics.rgb_to_y(arr, rounded=True)
    if convert == "gray":
        return np.floor(arr.astype(np.float64) @ _GRAY_COEFFS + 0.5)
    raise ValueError(f"convert must be 'y' or 'gray', got {convert!r}")


# -- MATLAB imresize (bicubic, antialiased when shrinking) ------------------------------------------

def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``bicubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def _resize_matrix(in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) of each output sample along one axis: output ``i`` (1-based) sits at input
    position ``i / scale + (1 - 1 / scale) / 2``; when shrinking the kernel is stretched by
    ``1 / scale`` (antialiasing); out-of-range taps mirror at the border (symmetric padding)."""
    out_len = int(math.ceil(in_len * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    kernel = (lambda x: scale * _cubic(scale * x)) if scale < 1 else _cubic
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    w = kernel(u[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    return idx, w


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` of a 2-D float image (bicubic, antialiasing on, no rounding):
    rows first, then columns; output ``ceil(scale * size)``."""
    x = np.asarray(image, np.float64)
    for axis in (0, 1):
        idx, w = _resize_matrix(x.shape[axis], scale)
        x = np.moveaxis(x, axis, 0)
        x = np.einsum("ok,ok...->o...", w, x[idx])
        x = np.moveaxis(x, 0, axis)
    return x


# -- natural scene statistics -------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _gaussian_window() -> np.ndarray:
    """MATLAB ``fspecial('gaussian', 7, 7/6)``, normalised."""
    x = np.arange(-3, 4, dtype=np.float64)
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2.0 * (7.0 / 6.0) ** 2))
    return g / g.sum()


def mscn(image: np.ndarray, border: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + 1)`` and ``sigma`` (local
    7x7 Gaussian moments). ``border``: ``"nearest"`` (MATLAB ``imfilter(..., 'replicate')``, NIQE) or
    ``"constant"`` (zeros: ``filter2(..., 'same')``, BRISQUE)."""
    im = np.asarray(image, np.float64)
    win = _gaussian_window()
    mu = ndimage.correlate(im, win, mode=border, cval=0.0)
    sigma = np.sqrt(np.abs(ndimage.correlate(im * im, win, mode=border, cval=0.0) - mu * mu))
    return (im - mu) / (sigma + 1.0), sigma


@functools.lru_cache(maxsize=1)
def _shape_ratios() -> tuple[np.ndarray, np.ndarray]:
    g = _SHAPES
    ggd = special.gamma(1.0 / g) * special.gamma(3.0 / g) / special.gamma(2.0 / g) ** 2
    return ggd, 1.0 / ggd


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """(shape, sigma) of a zero-mean generalised Gaussian by moment matching (Sharifi & Leon-Garcia):
    the shape on the 0.001 grid whose ``Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2`` is closest to
    ``E[x^2] / E[|x|]^2``; sigma = sqrt(E[x^2])."""
    x = np.asarray(x, np.float64).ravel()
    sigma_sq = float(np.mean(x * x))
    e_abs = float(np.mean(np.abs(x)))
    if e_abs == 0.0:
        return float("nan"), 0.0
    ratio, _ = _shape_ratios()
    return float(_SHAPES[np.argmin(np.abs(sigma_sq / e_abs ** 2 - ratio))]), math.sqrt(sigma_sq)


def aggd_fit(x: np.ndarray) -> tuple[float, float, float]:
    """(shape, left std, right std) of an asymmetric generalised Gaussian (Lasmar, Stitou & Berthoumieu
    2009, as in the BRISQUE paper): the stds are the root mean squares of the negative and positive
    values; the shape is the grid value whose ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` is closest to
    ``r = E[|x|]^2 / E[x^2]`` corrected by ``(g^3 + 1)(g + 1) / (g^2 + 1)^2``, g = left / right std.
    A side without values gives NaN (MATLAB's mean of nothing)."""
    x = np.asarray(x, np.float64).ravel()
    neg, pos = x[x < 0], x[x > 0]
    left = math.sqrt(float(np.mean(neg * neg))) if neg.size else float("nan")
    right = math.sqrt(float(np.mean(pos * pos))) if pos.size else float("nan")
    mean_sq = float(np.mean(x * x))
    if not (math.isfinite(left) and math.isfinite(right)) or right == 0.0 or mean_sq == 0.0:
        return float("nan"), left, right
    g = left / right
    r = float(np.mean(np.abs(x))) ** 2 / mean_sq
    r_norm = r * (g ** 3 + 1.0) * (g + 1.0) / (g ** 2 + 1.0) ** 2
    _, ratio = _shape_ratios()
    return float(_SHAPES[np.argmin((ratio - r_norm) ** 2)]), left, right


# The neighbour of each coefficient whose product is fitted (MATLAB circshift of the coefficient map):
# horizontal, vertical, main diagonal, secondary diagonal.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _gamma_ratio(a: float, num: float, den: float) -> float:
    return special.gamma(num / a) / special.gamma(den / a) if math.isfinite(a) else float("nan")


def niqe_block_features(coeffs: np.ndarray) -> np.ndarray:
    """The 18 NIQE features of one block of MSCN coefficients: the AGGD shape and mean scale
    ``(beta_l + beta_r) / 2`` of the coefficients, then for each neighbour product the shape, the mean
    ``(beta_r - beta_l) Gamma(2/a) / Gamma(1/a)`` and both scales ``beta = std sqrt(Gamma(1/a) / Gamma(3/a))``."""
    feats = []
    for k, shift in enumerate((None, *_SHIFTS)):
        values = coeffs if shift is None else coeffs * np.roll(coeffs, shift, axis=(0, 1))
        a, left, right = aggd_fit(values)
        c = math.sqrt(_gamma_ratio(a, 1.0, 3.0)) if math.isfinite(a) else float("nan")
        bl, br = left * c, right * c
        if shift is None:
            feats += [a, (bl + br) / 2.0]
        else:
            feats += [a, (br - bl) * _gamma_ratio(a, 2.0, 1.0), bl, br]
    return np.array(feats, np.float64)


def niqe_features(grey_image: np.ndarray, block: int = NIQE_BLOCK) -> np.ndarray:
    """``[blocks, 36]``: the features of every ``block`` x ``block`` block (scale 1) next to those of the
    same block at half resolution (``block / 2``)."""
    im = np.asarray(grey_image, np.float64)
    rows, cols = im.shape[0] // block, im.shape[1] // block
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs an image of at least {block}x{block} pixels, got {im.shape[1]}x{im.shape[0]}")
    im = im[:rows * block, :cols * block]
    per_scale = []
    for scale in (1, 2):
        coeffs, _ = mscn(im, "nearest")
        b = block // scale
        per_scale.append(np.array([niqe_block_features(coeffs[r * b:(r + 1) * b, c * b:(c + 1) * b])
                                   for c in range(cols) for r in range(rows)]))
        im = imresize(im, 0.5)
    return np.concatenate(per_scale, axis=1)


@functools.lru_cache(maxsize=1)
def niqe_model() -> tuple[np.ndarray, np.ndarray]:
    """(mean [36], covariance [36, 36]) of the NIQE release's pristine model."""
    with np.load(os.path.join(MODEL_DIR, "niqe_pristine.npz")) as data:
        return data["mu"].copy(), data["cov"].copy()


def _nancov(x: np.ndarray) -> np.ndarray:
    """MATLAB ``nancov``: the covariance (N - 1) of the rows without NaN."""
    x = x[~np.isnan(x).any(axis=1)]
    if len(x) < 2:
        return np.full((x.shape[1], x.shape[1]), np.nan)
    return np.cov(x, rowvar=False)


def niqe(image, *, convert: str = "y", block: int = NIQE_BLOCK) -> float:
    """NIQE of an image (module docstring); ``image``: HxWx3 RGB (uint8, or float in [0, 1]) or a
    grey HxW; ``convert``: its grey image (:func:`grey`)."""
    return niqe_of_grey(grey(image, convert), block=block)


def niqe_of_grey(grey_image: np.ndarray, *, block: int = NIQE_BLOCK) -> float:
    """NIQE of a grey float image on the 0..255 scale. Needs at least one ``block`` x ``block`` block;
    one block alone has no covariance (the pristine one is then used alone)."""
    feats = niqe_features(grey_image, block)
    mu_p, cov_p = niqe_model()
    mu_d = np.nanmean(feats, axis=0) if np.isfinite(feats).any() else np.full(36, np.nan)
    cov_d = _nancov(feats)
    if np.isnan(cov_d).any():
        cov_d = np.zeros_like(cov_p) if len(feats) < 2 else np.nan_to_num(cov_d)
    d = mu_p - mu_d
    if not np.isfinite(d).all():
        return float("nan")
    return float(math.sqrt(max(0.0, d @ np.linalg.pinv((cov_p + cov_d) / 2.0) @ d)))


# -- BRISQUE ------------------------------------------------------------------------------------------

def brisque_features(grey_image: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a grey image (0..255): per scale the GGD shape and variance of the
    MSCN coefficients, then for each neighbour product the AGGD shape, mean
    ``(r - l) Gamma(2/a) / Gamma(1/a) sqrt(Gamma(1/a) / Gamma(3/a))``, left and right variances."""
    im = np.asarray(grey_image, np.float64)
    if min(im.shape) < 7:
        raise ValueError(f"BRISQUE needs an image of at least 7x7 pixels, got {im.shape[1]}x{im.shape[0]}")
    feats = []
    for _ in (1, 2):
        coeffs, _sigma = mscn(im, "constant")
        a, sigma = ggd_fit(coeffs)
        feats += [a, sigma * sigma]
        for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            a, left, right = aggd_fit(coeffs * np.roll(coeffs, shift, axis=(0, 1)))
            const = math.sqrt(_gamma_ratio(a, 1.0, 3.0)) if math.isfinite(a) else float("nan")
            feats += [a, (right - left) * _gamma_ratio(a, 2.0, 1.0) * const, left * left, right * right]
        im = imresize(im, 0.5)
    return np.array(feats, np.float64)


@functools.lru_cache(maxsize=1)
def brisque_model() -> Mapping[str, np.ndarray]:
    """The BRISQUE release's SVR (``allmodel``) and feature ranges (``allrange``) as arrays."""
    with np.load(os.path.join(MODEL_DIR, "brisque_live.npz")) as data:
        return {k: data[k].copy() for k in data.files}


def brisque_scale(features: np.ndarray) -> np.ndarray:
    """LibSVM ``svm-scale -r allrange``: each feature mapped linearly from its [min, max] over the
    training set to [-1, 1] (features with min == max are left out, i.e. 0)."""
    m = brisque_model()
    f = np.asarray(features, np.float64)
    lo, hi = float(m["scale_lower"]), float(m["scale_upper"])
    span = m["feature_max"] - m["feature_min"]
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = lo + (hi - lo) * (f - m["feature_min"]) / span
    return np.where(span == 0, 0.0, scaled)


def brisque_score_features(features: np.ndarray) -> float:
    """The release's epsilon-SVR on 36 unscaled features: ``sum_i c_i exp(-gamma |x - s_i|^2) - rho``."""
    m = brisque_model()
    x = brisque_scale(features)
    if not np.isfinite(x).all():
        return float("nan")
    k = np.exp(-float(m["gamma"]) * np.sum((m["support_vectors"] - x) ** 2, axis=1))
    return float(m["dual_coef"] @ k - float(m["rho"]))


def brisque(image, *, convert: str = "gray") -> float:
    """BRISQUE of an image (module docstring); ``image`` as for :func:`niqe`."""
    return brisque_score_features(brisque_features(grey(image, convert)))


def brisque_of_grey(grey_image: np.ndarray) -> float:
    """BRISQUE of a grey float image on the 0..255 scale."""
    return brisque_score_features(brisque_features(grey_image))


# -- what evaluate / compare report --------------------------------------------------------------------

def score(image, names=METRICS) -> dict:
    """``{name: value}`` of the no-reference metrics ``names`` (``niqe``, ``brisque``) of one image; a
    metric the image is too small for is NaN."""
    fns = {"niqe": niqe, "brisque": brisque}
    out = {}
    for name in names:
        if name not in fns:
            raise ValueError(f"unknown no-reference metric {name!r}: choose from {', '.join(METRICS)}")
        try:
            out[name] = fns[name](image)
        except ValueError as e:
            if "needs an image" not in str(e):
                raise
            out[name] = float("nan")
    return out
