"""Reading and writing images at the package's edges (float32 RGB in [0, 1] inside).

``load_rgb`` accepts what users' photo folders hold: 8- and 16-bit, grey, grey+alpha, RGB and RGBA
PNG/JPEG/BMP/TIFF/WebP. Grey becomes three equal channels, alpha is dropped, 16-bit is scaled by
1/65535. Anything unreadable raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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


def load_rgb(path: str) -> np.ndarray:
    """Read ``path`` as float32 HxWx3 RGB in [0, 1]."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"{path}: not a readable image (PNG, JPEG, BMP, TIFF or WebP expected)")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"{path}: unsupported pixel type {img.dtype} (8-bit, 16-bit or float expected)")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 2:  # grey + alpha
        img = np.repeat(img[..., :1], 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    else:
        raise ValueError(f"{path}: unsupported image shape {img.shape}")
    return np.ascontiguousarray(img)


def save_rgb(path: str, image: np.ndarray) -> None:
    """Write a float HxWx3 RGB image in [0, 1] as 8-bit (PNG unless the extension says otherwise)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    from erl_derain.metrics import to_uint8

    try:
        img = to_uint8(np.asarray(image, np.float32))
    except ValueError as e:
        raise ValueError(f"{path}: cannot write: {e}") from e
    ext = os.path.splitext(path)[1] or ".png"
    ok, buf = cv2.imencode(ext, img[..., ::-1])
    if not ok:
        raise ValueError(f"{path}: cannot encode an image with extension {ext!r}")
    tmp = f"{path}.tmp-{os.getpid()}"
    buf.tofile(tmp)
    os.replace(tmp, path)
