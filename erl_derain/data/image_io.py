"""Reading and writing RGB images as float32 arrays in [0, 1].

The library works on float32 HxWx3 images in [0, 1] (DESIGN.md section 4); these helpers are the
edge where files become such arrays and back:

- :func:`load_rgb` reads PNG/JPEG/BMP/TIFF/WebP files of any bit depth and channel count (grayscale ->
  RGB, gray+alpha or RGBA -> alpha dropped, 16-bit -> divided by 65535, float TIFF -> clipped to
  [0, 1]) and raises ``ValueError`` naming the file when it cannot be decoded.
- :func:`decode_rgb` does the same for encoded bytes already in memory.
- :func:`save_rgb` writes an 8-bit RGB PNG (or any format OpenCV infers from the suffix), creating
  the parent folders.

Paths with a URL scheme (``gs://...``) are read and written through ``tf.io.gfile``; local paths use
plain file I/O (which, unlike ``cv2.imread``, also copes with non-ASCII paths on every platform).
OpenCV does not apply EXIF orientation when reading with ``IMREAD_UNCHANGED``; images are used as
stored.
"""

from __future__ import annotations

import os
from typing import Union

import cv2
import numpy as np

PathLike = Union[str, os.PathLike]

#: File suffixes (lower case) treated as images when scanning folders.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: PathLike) -> bool:
    """True if ``path`` has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def _is_remote(path: str) -> bool:
    return "://" in path


def _read_bytes(path: str) -> bytes:
    if _is_remote(path):
        import tensorflow as tf  # only needed for gs:// and other tf.io.gfile file systems

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _write_bytes(path: str, data: bytes) -> None:
    if _is_remote(path):
        import tensorflow as tf

        parent = path.rsplit("/", 1)[0]
        tf.io.gfile.makedirs(parent)
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        return
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def to_float01(img: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Convert a decoded OpenCV image (BGR order, any depth/channels) to float32 RGB HxWx3 in [0, 1].

    Args:
      img: array as returned by ``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)``: HxW, HxWx1, HxWx2 (gray +
        alpha), HxWx3 (BGR) or HxWx4 (BGRA); dtype uint8, uint16 or float.
      name: used in error messages.
    """
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"Unsupported image shape {img.shape} in {name}")
    channels = img.shape[2]
    if channels in (1, 2):  # gray or gray + alpha: drop alpha, replicate gray
        img = np.repeat(img[:, :, :1], 3, axis=2)
    elif channels == 3:
        img = img[:, :, ::-1]  # BGR -> RGB
    elif channels == 4:
        img = img[:, :, 2::-1]  # BGRA -> RGB, alpha dropped
    else:
        raise ValueError(f"Unsupported number of channels ({channels}) in {name}")

    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 65535.0
    elif np.issubdtype(img.dtype, np.floating):
        out = np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0)
    else:
        raise ValueError(f"Unsupported pixel type {img.dtype} in {name}")
    return np.ascontiguousarray(out, dtype=np.float32)


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to float32 RGB HxWx3 in [0, 1]; ``ValueError`` naming ``name`` if not."""
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ValueError(f"Cannot read image file {name}: not a decodable image (or empty/corrupt)")
    return to_float01(img, name)


def load_rgb(path: PathLike) -> np.ndarray:
    """Read an image file as float32 RGB HxWx3 in [0, 1].

    Grayscale images are replicated to three channels, alpha is dropped, 8-bit values are divided by
    255 and 16-bit values by 65535.

    Raises:
      ValueError: naming the file, when it does not exist, cannot be read or cannot be decoded.
    """
    path = os.fspath(path)
    try:
        data = _read_bytes(path)
    except (OSError, IOError) as e:  # tf.errors.NotFoundError subclasses OSError-like errors only on some paths
        raise ValueError(f"Cannot read image file {path}: {e}") from e
    except Exception as e:  # tf.io.gfile errors
        raise ValueError(f"Cannot read image file {path}: {e}") from e
    return decode_rgb(data, path)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float image in [0, 1] (values outside are clipped) -> uint8 with rounding; uint8 passes through."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    return np.clip(np.round(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def save_rgb(path: PathLike, img: np.ndarray) -> str:
    """Write an RGB image (float in [0, 1], or uint8) to ``path``, creating parent folders.

    The format follows the suffix (use ``.png`` for lossless 8-bit output). HxW or HxWx1 grayscale is
    accepted and written as RGB. Returns the path as a string.

    Raises:
      ValueError: when the array has an unsupported shape or OpenCV cannot encode it.
    """
    path = os.fspath(path)
    arr = to_uint8(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"save_rgb expects HxW, HxWx1 or HxWx3, got {arr.shape} for {path}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    suffix = os.path.splitext(path)[1] or ".png"
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(arr[:, :, ::-1]))
    if not ok:
        raise ValueError(f"Cannot encode image for {path} (suffix {suffix!r})")
    _write_bytes(path, buf.tobytes())
    return path
