"""Reading and writing images at the package's edges (float32 RGB in [0, 1] inside).

Two levels:

* ``read_image`` / ``write_image`` keep what a photo *is*: ``read_image(path)`` returns the pixels
  as float32 HxWx3 RGB in [0, 1] (what the networks see) plus an :class:`ImageMeta` recording the
  mode (``'L'``, ``'LA'``, ``'RGB'``, ``'RGBA'``), the bit depth (8 or 16), the alpha channel (kept
  as stored, full precision), the EXIF orientation that was applied, the ICC profile and the rest of
  the EXIF block. ``write_image(path, rgb, meta)`` turns a processed RGB image back into that: grey
  for grey sources, the untouched alpha channel, 16 bits for 16-bit sources.
* ``load_rgb`` / ``save_rgb``: plain float RGB in, 8-bit RGB out (datasets, synthesis, tests).
  ``load_rgb(path)`` is ``read_image(path)[0]``.

Reading (``read_image``)
    Accepts JPEG, PNG, BMP, WebP and TIFF (Pillow decodes, OpenCV decodes what Pillow reduces or
    cannot open: 16-bit colour PNG/TIFF, float TIFF). Multi-frame files give their first frame.

    * EXIF orientation is applied (Pillow's ``ImageOps.exif_transpose``; the same transform by hand
      for OpenCV-decoded 16-bit files), so pixels come out upright as a photo viewer shows them.
    * Grey (``L``, 1-bit, 16-bit grey) becomes three equal channels; ``meta.mode`` says ``'L'``.
    * Grey+alpha / RGBA: the alpha channel goes to ``meta.alpha`` (HxW, uint8 or uint16, upright),
      the colour to the RGB image. Palette images become RGB, or RGBA when the palette has
      transparency; CMYK/YCbCr/LAB become RGB.
    * 16 bits per sample are scaled by 1/65535 straight from uint16 to float32 (never through
      8 bits); float TIFFs are clipped to [0, 1] and recorded as 16-bit (written back as 16-bit).
    * Anything unreadable raises ``ValueError`` naming the file.
    * Size limit: an image whose header declares more than ``MAX_PIXELS`` pixels (100 MP by default;
      ``erl-derain --max_pixels`` sets it with ``set_max_pixels``) raises :class:`ImageTooLarge`
      (``"<path>: image too large: W x H ..."``) before any pixel is decoded: ``declared_size``
      reads the size from the PNG, JPEG, GIF, BMP, WebP or TIFF header, so neither Pillow nor
      OpenCV ever allocates a decompression bomb's pixels. Pillow's own limit
      (``Image.MAX_IMAGE_PIXELS``) follows the same value. ``check_size`` is the check, shared by
      the dataset header scan (``streams.read_header``) and the builders.

Writing (``write_image``)
    The **extension of the output path** chooses the format (``.png .jpg .jpeg .bmp .tif .tiff
    .webp``; no extension = PNG; anything else raises). A format that cannot hold the data raises
    ``ValueError`` naming the file instead of silently dropping it: alpha needs PNG, TIFF or WebP;
    16 bits need PNG or TIFF (``check_writable`` runs the same checks up front, before an expensive
    de-raining). The file is written atomically (``erl_derain.fileio``: a temporary name in the same
    folder moved into place), so an interrupted run never leaves a truncated image under the final
    name; a folder that cannot be written raises ``ValueError`` naming the output file.

    * Quantisation: ``round(clip(x, 0, 1) * (2**bits - 1))``, halves away from zero (as
      ``metrics.to_uint8``); a float32 value k/65535 comes back as exactly k.
    * Grey output (``meta.mode`` ``'L'``/``'LA'``): ITU-R BT.601 luma ``0.299 R + 0.587 G +
      0.114 B`` of the network's RGB output (the weights Pillow's ``convert('L')`` and the Y-channel
      metrics use; for three equal channels it is that value exactly, so an identity model
      round-trips a grey image exactly).
    * Orientation: pixels are written upright and the EXIF orientation tag is dropped (the rest of
      the source EXIF is kept where Pillow writes it: JPEG, PNG, WebP; and 16-bit PNG via OpenCV
      when it supports metadata), so viewers do not rotate a second time. The ICC profile is kept
      for 8-bit outputs and 16-bit PNGs.
    * JPEG and WebP are lossy: ``quality`` (default 95; JPEG with 4:4:4 chroma). WebP has no grey
      mode: grey written as WebP is stored as RGB with three equal channels. 16-bit grey+alpha is
      written as 16-bit RGBA with three equal colour channels (OpenCV, the only 16-bit writer here,
      has no two-channel mode); no value is lost.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from erl_derain.fileio import atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Output format by extension, and what each format can hold.
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP"}
_HOLDS_ALPHA = ("PNG", "TIFF", "WEBP")
_HOLDS_16BIT = ("PNG", "TIFF")
_MODES = ("L", "LA", "RGB", "RGBA")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
_ORIENTATION_TAG = 0x0112
_CHUNK_ROWS = 256  # rows quantised at a time (bounds the float64 temporaries for 12 MP photos)

#: Images declaring more pixels than this are refused before decoding (``set_max_pixels``;
#: ``erl-derain --max_pixels``): 100 MP, well above a 12-48 MP camera photo.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS = DEFAULT_MAX_PIXELS
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow warns above it and refuses twice it; ours is checked first


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the limit (``MAX_PIXELS``)."""


def set_max_pixels(max_pixels: int) -> None:
    """Set the pixel limit of every reader of the package (and Pillow's, which follows it)."""
    global MAX_PIXELS
    max_pixels = int(max_pixels)
    if max_pixels < 1:
        raise ValueError(f"--max_pixels must be a positive number of pixels, got {max_pixels}")
    MAX_PIXELS = max_pixels
    Image.MAX_IMAGE_PIXELS = max_pixels


def check_size(width: int, height: int, where: str, max_pixels: int | None = None) -> None:
    """Raise :class:`ImageTooLarge` (``"<where>: image too large: W x H ..."``) when ``width x height``
    exceeds ``max_pixels`` (default ``MAX_PIXELS``)."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if int(width) * int(height) > limit:
        raise ImageTooLarge(f"{where}: image too large: {int(width)} x {int(height)} pixels "
                            f"({int(width) * int(height) / 1e6:.1f} MP; the limit is {limit / 1e6:g} MP, "
                            f"--max_pixels={limit})")


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def declared_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` as the header of an encoded PNG, JPEG, GIF, BMP, WebP or TIFF file declares
    it (nothing is decoded), or None when the bytes are none of those or too short to say."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            if len(data) < 30:  # (int.from_bytes reads a cut field as a small number)
                return None
            chunk = data[12:16]
            if chunk == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L" and data[20:21] == b"\x2f":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            return None
        if data[:2] == b"\xff\xd8":
            i = 2
            while i + 4 <= len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
                    i += 2
                    continue
                if marker in _JPEG_SOF:
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return w, h
                i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            end = "<" if data[:2] == b"II" else ">"
            ifd = struct.unpack(end + "I", data[4:8])[0]
            size = {}
            for k in range(struct.unpack(end + "H", data[ifd:ifd + 2])[0]):
                tag, kind = struct.unpack(end + "HH", data[ifd + 2 + 12 * k:ifd + 6 + 12 * k])
                if tag in (256, 257):
                    value = data[ifd + 10 + 12 * k:ifd + 14 + 12 * k]
                    size[tag] = struct.unpack(end + ("H" if kind == 3 else "I"), value[:2 if kind == 3 else 4])[0]
            return (size[256], size[257]) if len(size) == 2 else None
    except (struct.error, IndexError):
        return None
    return None


def check_declared_size(data: bytes, where: str) -> tuple[int, int] | None:
    """``declared_size(data)`` checked against the limit (``check_size``); None when unknown."""
    size = declared_size(data)
    if size is not None:
        check_size(size[0], size[1], where)
    return size


@dataclass(eq=False)
class ImageMeta:
    """What ``read_image`` found besides the RGB pixels; ``write_image`` restores it.

    ``mode``: ``'L'``, ``'LA'``, ``'RGB'`` or ``'RGBA'``. ``bit_depth``: 8 or 16 (bits per sample).
    ``alpha``: HxW uint8/uint16 alpha channel as stored (upright), ``None`` without alpha.
    ``orientation``: the EXIF orientation (1-8) applied on read; 1 = none. ``format``: the
    source's format name (``'JPEG'``, ``'PNG'``, ...). ``icc_profile``/``exif``: the source's
    colour profile and EXIF block (orientation tag removed), ``None`` when absent.
    """

    mode: str = "RGB"
    bit_depth: int = 8
    alpha: np.ndarray | None = None
    orientation: int = 1
    format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"ImageMeta.mode must be one of {_MODES}, got {self.mode!r}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"ImageMeta.bit_depth must be 8 or 16, got {self.bit_depth!r}")
        if self.has_alpha != (self.alpha is not None):
            raise ValueError(f"mode {self.mode!r} " + ("needs an alpha channel" if self.has_alpha else
                                                       "has no alpha channel, but one was given"))

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("LA", "RGBA")

    @property
    def grey(self) -> bool:
        return self.mode in ("L", "LA")


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def list_images(folder: str) -> list[str]:
    """The image files of ``folder`` (by extension, any case), sorted by name."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return files


def images_by_stem(folder: str) -> dict[str, str]:
    """``{name stem: path}`` of the images of ``folder``; two files with one stem (``a.png`` and
    ``a.jpg``) raise ``ValueError`` naming both, since outputs and example names would collide."""
    by_stem: dict[str, str] = {}
    for path in list_images(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in by_stem:
            raise ValueError(f"{by_stem[stem]} and {path} have the same name stem {stem!r}; rename one")
        by_stem[stem] = path
    return by_stem



def images_in_tree(folder: str) -> dict[str, str]:
    """``{name: path}`` of the images of ``folder`` and its sub-folders (any depth, hidden ones
    skipped), the name being the path below ``folder`` without its extension, ``/`` written ``-``
    (``bsds500/train/100075.jpg`` -> ``bsds500-train-100075``). Two files with one name raise
    ``ValueError`` naming both; a tree without images raises ``ValueError``."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    named: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(root, f)
            name = os.path.splitext(os.path.relpath(path, folder))[0].replace(os.sep, "-")
            if name in named:
                raise ValueError(f"{named[name]} and {path} have the same name {name!r}; rename one")
            named[name] = path
    if not named:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found in it or its sub-folders")
    return named


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an HxW[xC] array stored with EXIF ``orientation`` (1-8) upright (as
    ``ImageOps.exif_transpose`` does for Pillow images); other values leave it unchanged."""
    ops = {
        2: lambda a: a[:, ::-1],                        # mirrored left-right
        3: lambda a: a[::-1, ::-1],                     # rotated 180
        4: lambda a: a[::-1],                           # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),                  # transpose
        6: lambda a: np.rot90(a, -1),                   # rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),      # transverse
        8: lambda a: np.rot90(a, 1),                    # rotate 90 counter-clockwise
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(array)) if op else array


def _unreadable(path: str, detail: str = "") -> ValueError:
    return ValueError(f"{path}: not a readable image (PNG, JPEG, BMP, TIFF or WebP expected)"
                      + (f": {detail}" if detail else ""))


def _stored_bits(im: Image.Image, data: bytes) -> int:
    """Bits per sample as stored (Pillow opens 16-bit colour PNG/TIFF as 8-bit 'RGB')."""
    if im.mode.startswith("I;16"):
        return 16
    if im.format == "PNG" and data[12:16] == b"IHDR":
        return data[24]
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258, 8)
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def _stored_grey(im: Image.Image, data: bytes) -> bool:
    """Whether the file stores grey (+alpha) samples (Pillow opens 16-bit grey+alpha PNG as 'RGBA')."""
    if im.format == "PNG" and data[12:16] == b"IHDR":
        return data[25] in (0, 4)  # PNG colour types: grey, grey + alpha
    if im.format == "TIFF" and 262 in getattr(im, "tag_v2", {}):
        return im.tag_v2[262] in (0, 1)  # PhotometricInterpretation: white / black is zero
    return im.mode in ("L", "LA", "La", "1", "I", "F") or im.mode.startswith("I;16")


def _icc_space(profile: bytes | None) -> bytes | None:
    """The data colour space of an ICC profile (``b'RGB '``, ``b'GRAY'``, ``b'CMYK'``, ...)."""
    return profile[16:20] if profile and len(profile) >= 20 else None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of ``im``; 1 when absent or malformed."""
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block must not make the photo unreadable
        return 1
    return orientation if orientation in range(1, 9) else 1


def _exif_without_orientation(im: Image.Image) -> bytes | None:
    """The EXIF block of ``im`` without its orientation tag (edits ``im``'s EXIF: call last)."""
    try:
        exif = im.getexif()
        if _ORIENTATION_TAG in exif:
            del exif[_ORIENTATION_TAG]
        return exif.tobytes() if len(exif) else None
    except Exception:
        return None


def _read_pillow(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, str]:
    """8-bit path: upright uint8 colour (HxW or HxWx3), alpha or None, mode."""
    im = ImageOps.exif_transpose(im)
    has_trns = im.info.get("transparency") is not None
    if im.mode in ("L", "1") and not has_trns:
        im, mode = im.convert("L"), "L"
    elif im.mode in ("L", "1", "LA", "La"):
        im, mode = im.convert("LA"), "LA"
    elif im.mode in ("RGBA", "RGBa", "PA") or has_trns:
        im, mode = im.convert("RGBA"), "RGBA"
    else:  # RGB, RGBX, P, CMYK, YCbCr, LAB, HSV
        im, mode = im.convert("RGB"), "RGB"
    arr = np.asarray(im)
    if mode == "LA":
        return arr[..., 0], arr[..., 1].copy(), mode
    if mode == "RGBA":
        return arr[..., :3], arr[..., 3].copy(), mode
    return arr, None, mode


def _read_opencv(path: str, data: bytes, grey_hint: bool, orientation: int):
    """16-bit / float path: upright uint16 (or clipped float) colour, alpha or None, mode."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise _unreadable(path)
    if arr.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: the image holds NaN or infinite values")
        arr = np.clip(arr, 0.0, 1.0).astype(np.float32)
    elif arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: unsupported pixel type {arr.dtype} (8-bit, 16-bit or float expected)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    alpha = None
    if arr.ndim == 2:
        colour, mode = arr, "L"
    elif arr.shape[-1] == 2:
        colour, alpha, mode = arr[..., 0], arr[..., 1], "LA"
    elif arr.shape[-1] in (3, 4):
        if arr.shape[-1] == 4:
            alpha = arr[..., 3]
        if grey_hint:  # OpenCV expands grey(+alpha) to BGR(A) with equal channels
            colour, mode = arr[..., 0], "LA" if alpha is not None else "L"
        else:
            colour, mode = arr[..., 2::-1], "RGBA" if alpha is not None else "RGB"
    else:
        raise ValueError(f"{path}: unsupported image shape {arr.shape}")
    colour = apply_orientation(colour, orientation)
    if alpha is not None:
        alpha = apply_orientation(alpha, orientation)
        if alpha.dtype.kind == "f":
            alpha = _quantise(alpha, 16)
    return np.ascontiguousarray(colour), alpha, mode


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32)
        out /= 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32)
        out /= 65535.0
    else:
        out = np.asarray(arr, np.float32)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def read_image(path: str) -> tuple[np.ndarray, ImageMeta]:
    """Read ``path`` as (float32 HxWx3 RGB in [0, 1], upright; :class:`ImageMeta`).

    See the module docstring for formats, modes, bit depths and orientation. Raises ``ValueError``
    naming the file if it is missing or not a readable image."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    check_declared_size(data, path)  # before any decoder sees the file
    try:
        im = Image.open(io.BytesIO(data))
    except MemoryError:
        raise
    except Image.DecompressionBombError as e:  # a format declared_size does not read
        raise ImageTooLarge(f"{path}: image too large ({e})") from None
    except Exception:  # Pillow cannot open it (e.g. float RGB TIFF): OpenCV may
        im = None
    if im is not None:
        try:
            check_size(im.width, im.height, path)
        except ImageTooLarge:
            im.close()
            raise
    elif declared_size(data) is None and data[:4] not in (b"II*\x00", b"MM\x00*"):
        raise _unreadable(path)  # neither Pillow nor a header OpenCV could read within the limit
    try:
        if im is None:
            colour, alpha, mode = _read_opencv(path, data, False, 1)
            fmt, orientation, exif, icc = None, 1, None, None
        else:
            with im:
                fmt, icc = im.format, im.info.get("icc_profile") or None
                orientation = _orientation(im)
                if im.mode in ("I", "F") or _stored_bits(im, data) > 8:
                    colour, alpha, mode = _read_opencv(path, data, _stored_grey(im, data), orientation)
                else:
                    colour, alpha, mode = _read_pillow(im)
                exif = _exif_without_orientation(im)
    except MemoryError:
        raise
    except Exception as e:  # truncated or corrupt files raise all sorts of errors in the decoders
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e
    if _icc_space(icc) != (b"GRAY" if mode in ("L", "LA") else b"RGB "):
        icc = None  # e.g. the CMYK profile of a CMYK JPEG, whose pixels are now RGB
    bit_depth = 8 if colour.dtype == np.uint8 else 16
    if alpha is not None and alpha.dtype != (np.uint8 if bit_depth == 8 else np.uint16):
        alpha = _alpha_at(alpha, bit_depth)
    meta = ImageMeta(mode=mode, bit_depth=bit_depth, alpha=alpha, orientation=orientation, format=fmt,
                     icc_profile=icc, exif=exif)
    return _to_float(colour), meta


def load_rgb(path: str) -> np.ndarray:
    """Read ``path`` as float32 HxWx3 RGB in [0, 1], upright (EXIF orientation applied); grey
    becomes three equal channels, alpha is dropped. ``read_image(path)[0]``."""
    return read_image(path)[0]


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _quantise(x: np.ndarray, bit_depth: int, luma: bool = False) -> np.ndarray:
    """``round(clip(x, 0, 1) * max)`` (halves away from zero) as uint8/uint16, row chunks in float64.
    ``luma``: HxWx3 in, the BT.601 luma plane out."""
    top = 255.0 if bit_depth == 8 else 65535.0
    out = np.empty(x.shape[:2] if luma else x.shape, np.uint8 if bit_depth == 8 else np.uint16)
    for r in range(0, x.shape[0], _CHUNK_ROWS):
        c = np.asarray(x[r:r + _CHUNK_ROWS], np.float64)
        if not np.all(np.isfinite(c)):
            raise ValueError("the image holds NaN or infinite values")
        if luma:
            c = c[..., 0] * _LUMA[0] + c[..., 1] * _LUMA[1] + c[..., 2] * _LUMA[2]
        out[r:r + _CHUNK_ROWS] = np.floor(np.clip(c, 0.0, 1.0) * top + 0.5)
    return out


def _alpha_at(alpha: np.ndarray, bit_depth: int) -> np.ndarray:
    """The alpha channel as uint8/uint16 for ``bit_depth`` (unchanged when it already is)."""
    alpha = np.asarray(alpha)
    want = np.uint8 if bit_depth == 8 else np.uint16
    if alpha.dtype == want:
        return alpha
    if alpha.dtype == np.uint8:  # 8 -> 16 bits: exact (x * 257)
        return alpha.astype(np.uint16) * np.uint16(257)
    if alpha.dtype == np.uint16:  # 16 -> 8 bits
        return _quantise(alpha.astype(np.float64) / 65535.0, 8)
    return _quantise(alpha, bit_depth)  # float in [0, 1]


def output_format(path: str) -> str:
    """The format ``write_image`` writes for ``path`` (by extension; none = PNG); ``ValueError``
    for extensions it does not write."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if not ext:
        return "PNG"
    if ext not in _FORMATS:
        raise ValueError(f"{path}: cannot write {ext!r} images; use one of {', '.join(_FORMATS)}")
    return _FORMATS[ext]


def check_writable(path: str, meta: ImageMeta | None = None) -> str:
    """Raise ``ValueError`` naming ``path`` if its format (by extension) cannot hold an image
    described by ``meta`` without losing data (alpha, 16 bits); return the format name."""
    path = os.fspath(path)
    fmt = output_format(path)
    if meta is None:
        return fmt
    if meta.has_alpha and fmt not in _HOLDS_ALPHA:
        raise ValueError(f"{path}: {fmt} cannot store the alpha channel of this {meta.mode} image; "
                         f"write .png, .tif or .webp to keep it")
    if meta.bit_depth == 16 and fmt not in _HOLDS_16BIT:
        raise ValueError(f"{path}: {fmt} cannot store 16-bit pixels; write .png or .tif to keep them")
    return fmt


def _encode_pillow(arr: np.ndarray, fmt: str, meta: ImageMeta, quality: int) -> bytes:
    params: dict = {}
    grey = arr.ndim == 2 or arr.shape[-1] == 2
    stored_space = b"GRAY" if grey and fmt != "WEBP" else b"RGB "  # WebP stores grey as RGB
    if fmt in ("PNG", "JPEG", "WEBP", "TIFF") and _icc_space(meta.icc_profile) == stored_space:
        params["icc_profile"] = meta.icc_profile
    if fmt in ("PNG", "JPEG", "WEBP") and meta.exif:
        params["exif"] = meta.exif
    if fmt == "JPEG":
        params.update(quality=quality, subsampling=0)
    elif fmt == "WEBP":
        params.update(quality=quality)
    elif fmt == "TIFF":
        params.update(compression="tiff_deflate")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **params)
    return buf.getvalue()


def _encode_opencv(arr: np.ndarray, fmt: str, meta: ImageMeta) -> bytes:
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha: OpenCV writes 1, 3 or 4 channels
        arr = np.concatenate([np.repeat(arr[..., :1], 3, axis=-1), arr[..., 1:]], axis=-1)
    elif arr.ndim == 3:
        arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=-1)  # RGB(A) -> BGR(A)
    ext = ".png" if fmt == "PNG" else ".tif"
    types, chunks = [], []
    if fmt == "PNG" and hasattr(cv2, "imencodeWithMetadata"):
        if _icc_space(meta.icc_profile) == (b"GRAY" if arr.ndim == 2 else b"RGB "):
            types.append(cv2.IMAGE_METADATA_ICCP)
            chunks.append(np.frombuffer(meta.icc_profile, np.uint8))
        if meta.exif:
            exif = meta.exif[6:] if meta.exif.startswith(b"Exif\x00\x00") else meta.exif  # PNG eXIf: no prefix
            types.append(cv2.IMAGE_METADATA_EXIF)
            chunks.append(np.frombuffer(exif, np.uint8))
    if types:
        ok, buf = cv2.imencodeWithMetadata(ext, arr, types, chunks)
    else:
        ok, buf = cv2.imencode(ext, arr)
    if not ok:
        raise ValueError(f"OpenCV could not encode a 16-bit {fmt}")
    return buf.tobytes()


def _atomic_write_bytes(path: str, data: bytes) -> None:
    """``fileio.atomic_write_bytes`` (parents created); an OS error names ``path``, not the temporary file."""
    try:
        atomic_write_bytes(path, data, make_parents=True)
    except OSError as e:
        raise ValueError(f"{path}: cannot write: {e.strerror or e}") from e


def write_image(path: str, rgb: np.ndarray, meta: ImageMeta | None = None, *, quality: int = 95) -> None:
    """Write float HxWx3 RGB in [0, 1] to ``path`` as described by ``meta`` (default: 8-bit RGB):
    grey modes get the BT.601 luma, alpha modes ``meta.alpha`` unchanged, 16-bit sources 16 bits.
    The extension chooses the format; see the module docstring. Atomic (temp file + ``os.replace``).
    ``ValueError`` naming ``path`` for a format that cannot hold the image, a wrong shape or
    non-finite values."""
    path = os.fspath(path)
    meta = meta if meta is not None else ImageMeta()
    fmt = check_writable(path, meta)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"{path}: cannot write: expected an HxWx3 RGB image, got shape {rgb.shape}")
    if not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"{path}: cannot write: expected float pixels in [0, 1], got {rgb.dtype}")
    if meta.alpha is not None and meta.alpha.shape != rgb.shape[:2]:
        raise ValueError(f"{path}: cannot write: alpha channel {meta.alpha.shape} does not match the "
                         f"image {rgb.shape[:2]}")
    try:
        arr = _quantise(rgb, meta.bit_depth, luma=meta.grey)
    except ValueError as e:
        raise ValueError(f"{path}: cannot write: {e}") from e
    if meta.alpha is not None:
        arr = np.dstack([arr, _alpha_at(meta.alpha, meta.bit_depth)])
    try:
        data = (_encode_opencv(arr, fmt, meta) if meta.bit_depth == 16 else
                _encode_pillow(arr, fmt, meta, quality))
    except MemoryError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: cannot encode as {fmt}: {type(e).__name__}: {e}") from e
    del arr
    _atomic_write_bytes(path, data)


def save_rgb(path: str, image: np.ndarray) -> None:
    """Write a float HxWx3 RGB image in [0, 1] (or uint8) as 8-bit RGB (PNG unless the extension
    says otherwise); ``write_image`` without metadata."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    write_image(path, image)
