"""Rain-streak synthesis, following the intensity-aware deraining paper (Xu et al., TIP 2021, Sec. 4).

The paper's recipe (its dataset was made in Photoshop; this is the same recipe in numpy/OpenCV):

1. random noise (sparse seeds: ``density`` is the fraction of pixels that start a streak, each with
   a random brightness),
2. blurred by a Gaussian whose radius sets the streak thickness: 0.2 to 1.0 at steps of 0.2
   (``BLUR_SIGMAS``; 0.2 = small, 0.4/0.6 = medium, 0.8/1.0 = large in the paper's ablation),
3. motion blur along one of 7 directions, 0, +-15, +-30, +-40 degrees from vertical (``DIRECTIONS``;
   the paper takes the negative y axis as 0 degrees). Our sign convention: a positive angle leans the
   top of a streak to the right ("/"), a negative one to the left ("\\"),
4. the general additive model: rainy = clip(clean + rain, 0, 1).

Our additions (not in the paper; their defaults are documented here): ``length`` is the motion-blur length
in pixels; ``intensity`` is the brightness of an isolated streak (a single blurred seed is scaled to
peak 1 before the line kernel, so overlapping streaks add up and saturate as real heavy rain does);
rain is achromatic (added equally to R, G, B). For heavy rain, ``layers`` > 1 adds further streak layers
with their own direction, thickness and length, and ``accumulation=True`` applies the rain-
accumulation (veil) model of Yang et al. (JORDER, CVPR 2017): O = alpha * (B + sum_t S_t) + (1 - alpha) * A
with transmission ``alpha`` and atmospheric light ``A``. ``haze`` > 0 adds a smooth achromatic haze of
that mean brightness (a linear ramp in a random direction), the bright veil that very dense Photoshop
rain leaves: on such sets (SIRR's, Rain1400) rainy - clean is purely additive, its mean 2-50 grey levels,
and its brightness varies over the image on a large scale: ``modulation`` > 0 multiplies the streaks by
such a smooth positive field.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from erl_derain.data.image_io import images_by_stem, load_rgb, save_rgb

DIRECTIONS = (0.0, 15.0, -15.0, 30.0, -30.0, 40.0, -40.0)  # degrees from vertical
BLUR_SIGMAS = (0.2, 0.4, 0.6, 0.8, 1.0)                    # Gaussian radius: streak thickness
LONG_BLUR_SIGMAS = (0.6, 1.0, 1.5)                         # the soft, wide streaks of the "long" style
DENSE_BLUR_SIGMAS = (1.0, 1.5, 2.0)                        # the mottled, wider streaks of the "dense" style
WIDE_BLUR_SIGMAS = (1.0, 1.5, 2.0)                         # the 4-7 px wide streaks of the "wide" style
STYLES = ("streaks", "long", "dense", "wide", "veil")


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A line of ``length`` pixels through the kernel centre, ``angle`` degrees from vertical
    (positive: top to the right), anti-aliased, with peak value 1 (not normalised to sum 1)."""
    length = max(1.0, float(length))
    size = int(np.ceil(length)) | 1
    k = np.zeros((size, size), np.float32)
    c = size // 2
    t = np.deg2rad(angle)
    dx, dy = 0.5 * (length - 1) * np.sin(t), -0.5 * (length - 1) * np.cos(t)
    shift = 4  # sub-pixel precision of cv2.line
    p0 = (int(round((c + dx) * 2**shift)), int(round((c + dy) * 2**shift)))
    p1 = (int(round((c - dx) * 2**shift)), int(round((c - dy) * 2**shift)))
    cv2.line(k, p0, p1, 1.0, thickness=1, lineType=cv2.LINE_AA, shift=shift)
    if k.max() <= 0:
        k[c, c] = 1.0
    return k / k.max()


def _seed_peak(blur_sigma: float) -> float:
    """The peak of one Gaussian-blurred unit seed (dividing by it makes a seed peak at its brightness)."""
    size = max(9, 2 * int(np.ceil(4 * blur_sigma)) + 1)  # holds the whole Gaussian
    delta = np.zeros((size, size), np.float32)
    delta[size // 2, size // 2] = 1.0
    return float(cv2.GaussianBlur(delta, (0, 0), sigmaX=blur_sigma).max())


def mean_streak_brightness(density: float, length: float, angle: float, blur_sigma: float) -> float:
    """Expected mean of ``streak_layer`` (before ``intensity``): seeds of mean brightness 0.75 at rate
    ``density``, each spread to total mass ``1 / _seed_peak`` by the blur and ``sum(motion_kernel)`` by the
    line (edges and clipping aside)."""
    scale = 1.0 / _seed_peak(blur_sigma) if blur_sigma > 0 else 1.0
    return float(density * 0.75 * scale * motion_kernel(length, angle).sum())


def streak_layer(shape: tuple[int, int], *, density: float, length: float, angle: float, blur_sigma: float,
                 rng: np.random.Generator) -> np.ndarray:
    """One HxW layer of streaks with peak ~1 for an isolated streak (steps 1-3 of the recipe)."""
    h, w = shape
    seeds = (rng.random((h, w)) < density).astype(np.float32) * rng.uniform(0.5, 1.0, (h, w)).astype(np.float32)
    if blur_sigma > 0:
        seeds = cv2.GaussianBlur(seeds, (0, 0), sigmaX=blur_sigma, borderType=cv2.BORDER_REFLECT)
        # Scale so that one blurred seed peaks at its own brightness: thickness, not brightness, changes.
        seeds /= _seed_peak(blur_sigma)
    return cv2.filter2D(seeds, -1, motion_kernel(length, angle), borderType=cv2.BORDER_REFLECT)


@dataclass
class RainParams:
    """Settings of one rendering. ``sample`` draws them from light (level 0) to heavy (level 1) rain."""

    density: float = 0.01
    length: float = 20.0
    intensity: float = 0.6
    angle: float | None = None
    blur_sigma: float | None = None
    layers: int = 1
    accumulation: bool = False
    alpha: float | None = None
    atmospheric_light: float | None = None
    haze: float = 0.0
    modulation: float = 0.0
    haze_gradient: tuple[float, float] = (0.0, 0.8)

    @classmethod
    def sample(cls, rng: np.random.Generator, level: float, style: str = "streaks") -> "RainParams":
        """``style="streaks"`` is the paper's recipe (short streaks; several layers and the veil when
        heavy). ``style="long"`` is the Photoshop rain of DDN's Rain1400-like sets: many long (40-220 px),
        soft streaks of low brightness that overlap into a bright haze, purely additive. ``style="dense"``
        is the heaviest Photoshop rain (SIRR's sets): very many long (40-200 px), faint, wide streaks
        whose brightness varies smoothly over the image (``modulation``) plus a smooth additive ``haze``,
        scaled so that their mean brightness together is about 5-55 grey levels from light to heavy
        (``mean_streak_brightness`` turns that target into an intensity). ``style="wide"`` is the lighter
        Photoshop rain of the same sets: separate wide (Gaussian radius 1-2, 4-7 px), bright streaks, 8-45 px
        long, about one per 1000 pixels when light (their mean brightness about 2-4 grey levels, a streak
        peaking at 25-65), many more and dimmer (peaks 10-25) overlapping into drops when heavy (mean
        about 12-25 levels); no haze. ``style="veil"`` is SIRR's heaviest rain: the dense style's streaks
        over a veil that carries most (50-85%) of a mean added brightness of 8-75 grey levels and runs
        from almost nothing on one side of the image to twice its mean on the other (``haze_gradient``
        0.6-1)."""
        level = float(np.clip(level, 0.0, 1.0))
        if style not in STYLES:
            raise ValueError(f"rain style must be one of {STYLES}, got {style!r}")
        if style in ("dense", "veil"):
            sigma = float(rng.choice(DENSE_BLUR_SIGMAS))
            density = float(rng.uniform(0.002, 0.005) + 0.006 * level * rng.uniform(0.5, 1.0))
            length = float(rng.uniform(40, 120) + 80 * level * rng.uniform(0.5, 1.0))
            angle = float(rng.choice(DIRECTIONS))
            # The mean added brightness ([0, 1] units) and the share of it in streaks; the rest is haze.
            if style == "dense":
                target = (0.03 + 0.19 * level) * rng.uniform(0.6, 1.2)
                share, gradient = rng.uniform(0.6, 0.95), (0.0, 0.8)
            else:
                target = (0.05 + 0.2 * level) * rng.uniform(0.6, 1.2)
                share, gradient = rng.uniform(0.15, 0.5), (0.6, 1.0)
            per_unit = mean_streak_brightness(density, length, angle, sigma)
            return cls(density=density, length=length, intensity=float(target * share / per_unit), angle=angle,
                       blur_sigma=sigma, layers=1, accumulation=False, haze=float(target * (1 - share)),
                       modulation=float(rng.uniform(0.5, 1.0)), haze_gradient=gradient)
        if style == "wide":
            sigma = float(rng.choice(WIDE_BLUR_SIGMAS))
            length = float(rng.uniform(8, 45))
            angle = float(rng.choice(DIRECTIONS))
            target = (0.012 + 0.07 * level) * rng.uniform(0.6, 1.2)  # mean added brightness, [0, 1] units
            peak = rng.uniform(0.1, 0.25) * (1 - 0.6 * level)         # of a streak of mean seed brightness
            # Along a line much longer than it is wide, the blurred seeds add up to sigma * sqrt(2 pi) times a
            # seed's peak across the streak; seeds are 0.75 bright on average.
            intensity = peak / (0.75 * sigma * np.sqrt(2 * np.pi))
            density = target / (intensity * mean_streak_brightness(1.0, length, angle, sigma))
            return cls(density=float(min(density, 0.02)), length=length, intensity=float(intensity), angle=angle,
                       blur_sigma=sigma, layers=1, accumulation=False)
        if style == "long":
            sigma = float(rng.choice(LONG_BLUR_SIGMAS))
            return cls(
                density=float(0.0006 + 0.002 * level * rng.uniform(0.5, 1.0)),
                length=float(rng.uniform(40, 100) + 120 * level * rng.uniform(0.5, 1.0)),
                intensity=float((rng.uniform(0.04, 0.1) + 0.06 * level) / sigma),  # wider streaks are dimmer
                angle=float(rng.choice(DIRECTIONS)),
                blur_sigma=sigma,
                layers=1 + int(level > 0.5),
                accumulation=False,
            )
        return cls(
            density=float(0.0008 + 0.003 * level * rng.uniform(0.6, 1.0)),
            length=float(rng.uniform(10, 20) + 20 * level),
            intensity=float(rng.uniform(0.25, 0.4) + 0.3 * level),
            angle=float(rng.choice(DIRECTIONS)),
            blur_sigma=float(rng.choice(BLUR_SIGMAS)),
            layers=1 + int(level > 0.45) + int(level > 0.8),
            accumulation=bool(level > 0.6),
        )


def _ramp(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A linear ramp from -1 to 1 across an HxW image, in a random direction."""
    t = rng.uniform(0.0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.cos(t) * xx + np.sin(t) * yy
    return 2 * (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6) - 1


def synthesize_rain(clean: np.ndarray, *, density: float = 0.01, length: float = 20.0, intensity: float = 0.6,
                    angle: float | None = None, blur_sigma: float | None = None, layers: int = 1,
                    accumulation: bool = False, alpha: float | None = None, atmospheric_light: float | None = None,
                    haze: float = 0.0, modulation: float = 0.0, haze_gradient: tuple[float, float] = (0.0, 0.8),
                    seed: int | None = None,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Add rain to ``clean`` (float HxWx3 in [0,1]); returns ``(rainy, rain)`` with rainy = clean + rain.

    ``angle`` must be one of ``DIRECTIONS`` or None (random); ``blur_sigma`` in [0, 3] or None
    (random from ``BLUR_SIGMAS``; the paper's radii are 0.2-1.0, wider ones are for the "long" style). Layers after the first draw their own direction and thickness and
    a length of 0.6-1.2 times ``length``. ``accumulation`` applies the veil model with ``alpha``
    (transmission; random in [0.75, 0.95] if None) and ``atmospheric_light`` (random in [0.75, 1.0]).
    ``haze`` (>= 0) adds, after the streaks, ``haze * (1 + g * ramp)``: ``ramp`` runs linearly from -1 to
    1 across the image in a random direction, ``g`` is random in ``haze_gradient`` (default [0, 0.8];
    within [0, 1], so the haze is never negative; no draw when ``haze`` is 0).
    ``modulation`` (in [0, 1]) multiplies the streaks by ``max(0, 1 + modulation * f)``, ``f`` a smooth field
    in [-1, 1]: 0.6 of a ramp as above plus 0.4 of Gaussian-blurred noise (sigma = 1/8 of the longer
    side), so that rain is brighter on one side and in patches (no draw when ``modulation`` is 0).
    The result depends only on the inputs and ``seed`` (or the state of ``rng``).
    """
    clean = np.asarray(clean, np.float32)
    if clean.ndim != 3 or clean.shape[-1] != 3:
        raise ValueError(f"synthesize_rain expects an HxWx3 image, got shape {clean.shape}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if angle is not None and angle not in DIRECTIONS:
        raise ValueError(f"angle must be one of {DIRECTIONS} (degrees from vertical) or None, got {angle}")
    if blur_sigma is not None and not 0.0 <= blur_sigma <= 3.0:
        raise ValueError(f"blur_sigma must be in [0, 3] (the paper's radii are 0.2-1.0) or None, got {blur_sigma}")
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    if not 0.0 <= haze <= 1.0:
        raise ValueError(f"haze must be in [0, 1] (mean added brightness), got {haze}")
    lo, hi = haze_gradient
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"haze_gradient must be a range within [0, 1], got {haze_gradient}")
    if not 0.0 <= modulation <= 1.0:
        raise ValueError(f"modulation must be in [0, 1], got {modulation}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    h, w, _ = clean.shape
    streaks = np.zeros((h, w), np.float32)
    for i in range(layers):
        a = angle if (i == 0 and angle is not None) else float(rng.choice(DIRECTIONS))
        s = blur_sigma if (i == 0 and blur_sigma is not None) else float(rng.choice(BLUR_SIGMAS))
        ln = length if i == 0 else length * rng.uniform(0.6, 1.2)
        d = density if i == 0 else density * rng.uniform(0.4, 0.8)
        streaks += streak_layer((h, w), density=d, length=ln, angle=a, blur_sigma=s, rng=rng)
    if modulation > 0:
        noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0),
                                 sigmaX=max(h, w) / 8, borderType=cv2.BORDER_REFLECT)
        noise /= max(float(np.abs(noise).max()), 1e-6)
        streaks *= np.maximum(0.0, 1 + modulation * (0.6 * _ramp(h, w, rng) + 0.4 * noise))
    streaks = intensity * streaks[..., None]
    if haze > 0:
        streaks = streaks + (haze * (1 + rng.uniform(lo, hi) * _ramp(h, w, rng)))[..., None]
    if accumulation:
        a = float(rng.uniform(0.75, 0.95)) if alpha is None else float(alpha)
        light = float(rng.uniform(0.75, 1.0)) if atmospheric_light is None else float(atmospheric_light)
        rainy = a * (clean + streaks) + (1.0 - a) * light
    else:
        rainy = clean + streaks
    rainy = np.clip(rainy, 0.0, 1.0).astype(np.float32)
    return rainy, rainy - clean


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``synthesize_folder``: ``pairs`` holds the (rainy, clean) paths written so far."""

    def __init__(self, pairs):
        super().__init__(f"interrupted after {len(pairs)} pair(s)")
        self.pairs = pairs


def _write_pair(rainy_path: str, rainy: np.ndarray, clean_path: str, clean: np.ndarray) -> None:
    """Both images of a pair, or neither (the rainy one is removed if the clean one fails)."""
    save_rgb(rainy_path, rainy)
    try:
        save_rgb(clean_path, clean)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(rainy_path)
        raise


def synthesize_folder(clean_dir: str, output_dir: str, *, renders_per_image: int = 1, seed: int = 0,
                      levels: tuple[float, float] | None = None, failures: list | None = None,
                      progress: bool = False, **rain_kwargs) -> list[tuple[str, str]]:
    """Render rain on every image of ``clean_dir`` into ``output_dir/rainy`` and ``output_dir/clean``
    (same file names: ``<stem>.png``, or ``<stem>_<k>.png`` with several renders). With ``levels``
    (lo, hi), each rendering samples ``RainParams`` at a random level in [lo, hi] (any ``rain_kwargs``
    override the sampled values); otherwise ``rain_kwargs`` are passed to ``synthesize_rain``.

    Each photo gets its own generator, seeded from ``seed`` and its file name, so its renderings do
    not change when other photos are added to or removed from the folder. The clean image is rounded
    to 8 bits before the rain is added, so the written pair satisfies the rain model exactly (up to
    the rounding of the rainy image). Returns the written (rainy, clean) paths. A pair is written
    whole or not at all (each file atomically, the rainy one removed if its clean one fails).

    ``failures``: a list that receives ``(path, message)`` of each clean image that cannot be read
    (or is too large, ``image_io.MAX_PIXELS``); the others go on (None: the first one raises).
    ``progress``: print a line per written pair (failures on stderr, once). Ctrl-C raises
    :class:`Interrupted` with the pairs written so far.

    Raises:
      ValueError: ``clean_dir`` is missing or holds no images; two files share a stem (``a.png`` and
        ``a.jpg`` would write the same outputs); a file cannot be read (the message names it) when
        ``failures`` is None.
    """
    if renders_per_image < 1:
        raise ValueError(f"--renders_per_image must be >= 1, got {renders_per_image}")
    try:
        stems = images_by_stem(clean_dir)
    except ValueError as e:
        raise ValueError(f"--clean_dir: {e}") from e
    written = []
    try:
        for stem, path in stems.items():
            try:
                clean = np.round(load_rgb(path) * 255.0) / 255.0
            except ValueError as e:
                if failures is None:
                    raise
                failures.append((path, str(e)))
                if progress:
                    print(f"  FAILED {path}: {e}", file=sys.stderr, flush=True)
                continue
            rng = np.random.default_rng([seed, zlib.crc32(stem.encode("utf-8"))])
            for k in range(renders_per_image):
                if levels:
                    kwargs = {**asdict(RainParams.sample(rng, rng.uniform(*levels))), **rain_kwargs}
                else:
                    kwargs = dict(rain_kwargs)
                rainy, _ = synthesize_rain(clean, rng=rng, **kwargs)
                name = stem if renders_per_image == 1 else f"{stem}_{k}"
                rainy_path = os.path.join(output_dir, "rainy", name + ".png")
                clean_path = os.path.join(output_dir, "clean", name + ".png")
                _write_pair(rainy_path, rainy, clean_path, clean)
                written.append((rainy_path, clean_path))
                if progress:
                    print(f"  {path} -> {rainy_path}, {clean_path}", flush=True)
    except KeyboardInterrupt:
        raise Interrupted(written) from None
    return written
