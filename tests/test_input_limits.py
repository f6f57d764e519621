"""Issue 26, item 4: a documented pixel limit (``--max_pixels``, default 100 MP) checked from the header
before any pixel is decoded, in every reader: ``image_io.read_image`` (local derain, synthesize), the
dataset header scan (``streams.read_header``: evaluate, train), the TFDS builders' reader, the TF
Serving client, and the exported ``derain_image`` signature. A decompression bomb fails with
"image too large: W x H", at once, without allocating its pixels, and other inputs go on.

The bombs are crafted here: small real files (Pillow's) whose headers are patched to declare a huge
size (the PNG's IHDR with its CRC recomputed, the JPEG's SOF, the GIF screen, the BMP info header,
the WebP VP8 / VP8L / VP8X chunks, the TIFF IFD), plus a valid, fully decodable 20000 x 20000 PNG
of 50 KB. Pillow's own header parser (its bomb check switched off, nothing decoded) is the
independent reference for the size each crafted header declares."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from erl_derain.data import image_io

from .conftest import TINY_FLAGS, make_folder_dataset, shared_data_dir

BOMB = (20000, 20000)  # 400 MP: what the 1.1 MB PNG declared
DEFAULT_LIMIT = 100_000_000
OPENCV_TEXT = ("OpenCV", "cv::", "Assertion", "(-215", "CV_IO_MAX_IMAGE_PIXELS")


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    """Every test starts at the default limit; what it sets (or the CLI's --max_pixels) is undone."""
    monkeypatch.setattr(image_io, "MAX_PIXELS", DEFAULT_LIMIT, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


# --------------------------------------------------------------------------------------------------
# Crafting files
# --------------------------------------------------------------------------------------------------


def _encoded(fmt: str, size=(8, 8), mode: str = "RGB", seed: int = 0, **kw) -> bytes:
    w, h = size
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(w: int, h: int) -> bytes:
    """A real 8x8 PNG whose IHDR declares w x h (CRC recomputed, so decoders accept the header)."""
    d = bytearray(_encoded("PNG"))
    assert d[12:16] == b"IHDR"
    d[16:24] = struct.pack(">II", w, h)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])))
    return bytes(d)


def real_png(w: int, h: int) -> bytes:
    """A valid, fully decodable 1-bit grey PNG of w x h black pixels: 20000 x 20000 is 50 MB of rows
    that deflate to about 50 KB (decoded to float RGB by an unguarded reader: 4.8 GB)."""
    row = bytes(1 + (w + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))


def jpeg_declaring(w: int, h: int, **kw) -> bytes:
    d = bytearray(_encoded("JPEG", **kw))
    i = 2
    while not (0xC0 <= d[i + 1] <= 0xCF and d[i + 1] not in (0xC4, 0xC8, 0xCC)):  # to the SOF segment
        i += 2 + struct.unpack(">H", d[i + 2:i + 4])[0]
    d[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(d)


def gif_declaring(w: int, h: int) -> bytes:
    d = bytearray(_encoded("GIF"))
    d[6:10] = struct.pack("<HH", w, h)  # the logical screen
    return bytes(d)


def bmp_declaring(w: int, h: int) -> bytes:
    d = bytearray(_encoded("BMP"))
    d[18:26] = struct.pack("<ii", w, h)  # BITMAPINFOHEADER (a negative height: top-down rows)
    return bytes(d)


def webp_vp8_declaring(w: int, h: int) -> bytes:
    d = bytearray(_encoded("WEBP"))
    assert d[12:16] == b"VP8 " and d[23:26] == b"\x9d\x01\x2a"
    d[26:30] = struct.pack("<HH", w, h)  # 14 bits each (lossy: at most 16383 x 16383)
    return bytes(d)


def webp_vp8l_declaring(w: int, h: int) -> bytes:
    d = bytearray(_encoded("WEBP", lossless=True))
    assert d[12:16] == b"VP8L" and d[20] == 0x2F
    rest = int.from_bytes(d[21:25], "little") & ~((1 << 28) - 1)
    d[21:25] = (rest | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    return bytes(d)


def webp_vp8x_declaring(w: int, h: int) -> bytes:
    d = bytearray(_encoded("WEBP", exif=Image.Exif().tobytes()))  # EXIF: the extended format
    assert d[12:16] == b"VP8X"
    d[24:30] = (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")  # the canvas, 24 bits each
    return bytes(d)


def tiff_declaring(w: int, h: int, big_endian: bool = False) -> bytes:
    if big_endian:
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, np.zeros((8, 8, 3), np.uint8), byteorder=">", photometric="rgb")
        d = bytearray(buf.getvalue())
    else:
        d = bytearray(_encoded("TIFF"))
    end = "<" if d[:2] == b"II" else ">"
    ifd = struct.unpack(end + "I", d[4:8])[0]
    for k in range(struct.unpack(end + "H", d[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        tag = struct.unpack(end + "H", d[entry:entry + 2])[0]
        if tag in (256, 257):  # ImageWidth, ImageLength, rewritten as LONG
            d[entry + 2:entry + 12] = struct.pack(end + "HII", 4, 1, w if tag == 256 else h)
    return bytes(d)


def pillow_size(data: bytes) -> tuple[int, int]:
    """The size Pillow's header parser reads (its bomb check off; nothing is decoded)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# (name, suffix, crafting function, declared sizes: the 400 MP and the largest each format holds)
BOMBS = [
    ("png", ".png", png_declaring, [BOMB, (100000, 100000), (2**31 - 1, 2**31 - 1)]),
    ("jpeg", ".jpg", jpeg_declaring, [BOMB, (65500, 65500), (65535, 65535)]),
    ("jpeg_progressive", ".jpg", lambda w, h: jpeg_declaring(w, h, progressive=True), [BOMB]),
    ("gif", ".gif", gif_declaring, [BOMB, (65535, 65535)]),
    ("bmp", ".bmp", bmp_declaring, [BOMB, (100000, 100000)]),
    ("bmp_top_down", ".bmp", lambda w, h: bmp_declaring(w, -h), [BOMB]),
    ("webp_vp8", ".webp", webp_vp8_declaring, [(16383, 16383)]),
    ("webp_vp8l", ".webp", webp_vp8l_declaring, [(16384, 16384)]),
    ("webp_vp8x", ".webp", webp_vp8x_declaring, [BOMB, (100000, 100000)]),
    ("tiff", ".tif", tiff_declaring, [BOMB, (100000, 100000)]),
    ("tiff_big_endian", ".tif", lambda w, h: tiff_declaring(w, h, big_endian=True), [BOMB]),
]
BOMB_CASES = [pytest.param(make, suffix, size, id=f"{name}-{size[0]}x{size[1]}")
              for name, suffix, make, sizes in BOMBS for size in sizes]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _too_large(size) -> str:
    return f"image too large: {size[0]} x {size[1]}"


# --------------------------------------------------------------------------------------------------
# declared_size: the size the header declares, against independent references
# --------------------------------------------------------------------------------------------------


def _pillow_written(size, fmt, mode="RGB", **kw):
    return _encoded(fmt, size, mode, **kw)


def _opencv_written(size, ext, dtype=np.uint8, params=()):
    w, h = size
    arr = np.random.default_rng(1).integers(0, 255, (h, w, 3)).astype(dtype)
    if dtype == np.float32:
        arr /= 255
    ok, enc = cv2.imencode(ext, arr, list(params))
    assert ok
    return enc.tobytes()


WRITERS = {
    "pillow-png": lambda s: _pillow_written(s, "PNG"),
    "pillow-png-grey": lambda s: _pillow_written(s, "PNG", "L"),
    "pillow-png-rgba": lambda s: _pillow_written(s, "PNG", "RGBA"),
    "pillow-jpeg": lambda s: _pillow_written(s, "JPEG"),
    "pillow-jpeg-progressive": lambda s: _pillow_written(s, "JPEG", progressive=True),
    "pillow-jpeg-exif": lambda s: _pillow_written(s, "JPEG", exif=Image.Exif().tobytes()),
    "pillow-jpeg-grey": lambda s: _pillow_written(s, "JPEG", "L"),
    "pillow-gif": lambda s: _pillow_written(s, "GIF"),
    "pillow-bmp": lambda s: _pillow_written(s, "BMP"),
    "pillow-bmp-rgba": lambda s: _pillow_written(s, "BMP", "RGBA"),
    "pillow-webp": lambda s: _pillow_written(s, "WEBP"),
    "pillow-webp-lossless": lambda s: _pillow_written(s, "WEBP", lossless=True),
    "pillow-webp-alpha": lambda s: _pillow_written(s, "WEBP", "RGBA"),
    "pillow-webp-exif": lambda s: _pillow_written(s, "WEBP", exif=Image.Exif().tobytes()),
    "pillow-tiff": lambda s: _pillow_written(s, "TIFF"),
    "pillow-tiff-lzw": lambda s: _pillow_written(s, "TIFF", compression="tiff_lzw"),
    "opencv-png": lambda s: _opencv_written(s, ".png"),
    "opencv-png-16": lambda s: _opencv_written(s, ".png", np.uint16),
    "opencv-jpeg": lambda s: _opencv_written(s, ".jpg"),
    "opencv-jpeg-progressive": lambda s: _opencv_written(s, ".jpg", params=(cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    "opencv-bmp": lambda s: _opencv_written(s, ".bmp"),
    "opencv-webp": lambda s: _opencv_written(s, ".webp"),
    "opencv-webp-lossless": lambda s: _opencv_written(s, ".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 101)),
    "opencv-tiff": lambda s: _opencv_written(s, ".tif"),
    "opencv-tiff-16": lambda s: _opencv_written(s, ".tif", np.uint16),
    "opencv-tiff-float": lambda s: _opencv_written(s, ".tif", np.float32),
}
SIZES = [(1, 1), (37, 23), (300, 200), (257, 1031)]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_declared_size_is_what_the_encoder_wrote(writer):
    for size in SIZES:
        data = WRITERS[writer](size)
        assert image_io.declared_size(data) == size, (writer, size)


def test_declared_size_of_the_shared_real_images():
    """Every image of the shared real data (JPEG photos up to 12 MP with EXIF, PNG, BMP, TIFF) against
    Pillow's size and, for a sample, OpenCV's decode."""
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("no shared data")
    files = sorted(p for p in shared.rglob("*") if p.suffix.lower() in image_io.IMAGE_EXTENSIONS)
    assert len(files) > 100
    for k, path in enumerate(files):
        data = path.read_bytes()
        with Image.open(path) as im:
            assert image_io.declared_size(data) == im.size, path
        if k % 50 == 0:
            decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
            assert image_io.declared_size(data) == (decoded.shape[1], decoded.shape[0]), path


@pytest.mark.parametrize("writer", ["pillow-png", "pillow-jpeg-exif", "pillow-gif", "pillow-bmp", "pillow-webp",
                                    "pillow-webp-lossless", "pillow-webp-exif", "pillow-tiff"])
def test_declared_size_of_a_cut_header_is_none_or_right(writer):
    """Every prefix of a file (a truncated download, the first bytes of a scan) gives None or the true
    size, never an exception or a wrong size; so do garbage bytes."""
    data = WRITERS[writer]((37, 23))
    for n in range(len(data) + 1):
        assert image_io.declared_size(data[:n]) in (None, (37, 23)), (writer, n)
    for junk in (b"", b"\x89PNG", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8" + b"\xff" * 100, b"BM", b"RIFF\0\0\0\0WEBPVP8X",
                 b"II*\x00\xff\xff\xff\xff", b"MM\x00*\x00\x00\x00\x08\x00\x05", b"GIF89a\x01", os.urandom(64)):
        image_io.declared_size(junk)  # no exception


@pytest.mark.parametrize("make, suffix, size", BOMB_CASES)
def test_crafted_headers_declare_the_size(make, suffix, size):
    """The crafted bombs are what they claim: Pillow's header parser reads the same size."""
    data = make(*size)
    assert image_io.declared_size(data) == size
    if make is not webp_vp8x_declaring:  # (libwebp's demuxer refuses a canvas its frame does not fill)
        assert pillow_size(data) == size


# --------------------------------------------------------------------------------------------------
# read_image: refused from the header, at once, without allocating
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, suffix, size", BOMB_CASES)
def test_read_image_refuses_a_bomb_from_its_header(tmp_path, make, suffix, size):
    path = _write(tmp_path / f"bomb{suffix}", make(*size))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as info:
            image_io.read_image(str(path))
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert type(info.value).__name__ == "ImageTooLarge" and isinstance(info.value, image_io.ImageTooLarge)
    assert message.startswith(f"{path}: {_too_large(size)} pixels"), message
    assert "--max_pixels" in message and not any(t in message for t in OPENCV_TEXT), message
    assert seconds < 0.5, seconds
    assert peak < 8 * 2**20, peak  # the file's bytes and the header, not its pixels


def test_a_real_bomb_costs_no_memory(tmp_path):
    """A valid 50 KB PNG of 20000 x 20000 black pixels (fully decodable) and a 100000 x 100000 header,
    read in a fresh process: refused with the clean message, the peak resident memory does not grow
    (an address-space guard keeps a reader that does decode them from taking the machine)."""
    small = real_png(64, 48)
    image, _ = image_io.read_image(str(_write(tmp_path / "small.png", small)))  # the crafting is a valid PNG
    assert image.shape == (48, 64, 3) and image.max() == 0
    bomb = _write(tmp_path / "black.png", real_png(*BOMB))
    assert bomb.stat().st_size < 200_000
    huge = _write(tmp_path / "huge.png", png_declaring(100000, 100000))
    script = r"""
import json, resource, sys
from erl_derain.data import image_io

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
limit = vm + 2 * 2**30 if hard == resource.RLIM_INFINITY else min(vm + 2 * 2**30, hard)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
image_io.read_image(sys.argv[1])  # warm the readers up on a small image
out = {}
for path in sys.argv[2:]:
    before = peak()
    try:
        image_io.read_image(path)
        result = "read"
    except BaseException as e:  # pylint: disable=broad-except
        result = f"{type(e).__name__}: {e}"
    out[path] = [result, peak() - before]
print(json.dumps(out))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "small.png"), str(bomb), str(huge)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, size in ((bomb, BOMB), (huge, (100000, 100000))):
        result, growth = out[str(path)]
        assert result.startswith(f"ImageTooLarge: {path}: {_too_large(size)}"), result
        assert growth < 32 * 2**20, f"{path.name}: peak memory grew by {growth / 2**20:.0f} MB"


def test_the_limit_is_settable_and_pillow_follows(tmp_path):
    """set_max_pixels (what --max_pixels calls): exactly the limit passes, one pixel more is refused;
    Pillow's own limit follows; a limit below 1 is refused naming --max_pixels."""
    image_io.set_max_pixels(1000)
    assert image_io.MAX_PIXELS == 1000 and Image.MAX_IMAGE_PIXELS == 1000
    ok = _write(tmp_path / "ok.png", _encoded("PNG", (40, 25)))
    image, _ = image_io.read_image(str(ok))
    assert image.shape == (25, 40, 3)
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tif"), ("BMP", ".bmp")):
        path = _write(tmp_path / f"big{suffix}", _encoded(fmt, (41, 25)))
        with pytest.raises(image_io.ImageTooLarge, match=r"image too large: 41 x 25 pixels .*--max_pixels=1000"):
            image_io.read_image(str(path))
    image_io.check_size(1000, 1, "x")
    with pytest.raises(image_io.ImageTooLarge, match="x: image too large: 1001 x 1"):
        image_io.check_size(1001, 1, "x")
    image_io.check_size(1001, 1, "x", max_pixels=1001)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="--max_pixels"):
            image_io.set_max_pixels(bad)
    assert image_io.MAX_PIXELS == 1000
    image_io.set_max_pixels(image_io.DEFAULT_MAX_PIXELS)
    assert image_io.DEFAULT_MAX_PIXELS == DEFAULT_LIMIT == Image.MAX_IMAGE_PIXELS


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_sizes_pillow_only_warns_about_and_formats_without_a_parsed_header(tmp_path):
    """Between the limit and twice it Pillow only warns: refused all the same. A format whose header
    declared_size does not parse (PPM) is refused from Pillow's header, also beyond Pillow's own error."""
    path = _write(tmp_path / "wide.png", png_declaring(12000, 10000))  # 120 MP
    with pytest.raises(image_io.ImageTooLarge, match=_too_large((12000, 10000))):
        image_io.read_image(str(path))
    for size in ((12000, 10000), BOMB):
        ppm = _write(tmp_path / f"bomb{size[0]}.ppm", b"P6\n%d %d\n255\n" % size + bytes(64))
        with pytest.raises(image_io.ImageTooLarge, match=f"{ppm}: image too large"):
            image_io.read_image(str(ppm))


# --------------------------------------------------------------------------------------------------
# The dataset header scan and the builders' reader
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, suffix, size", [
    (png_declaring, ".png", BOMB), (png_declaring, ".png", (100000, 100000)), (jpeg_declaring, ".jpg", BOMB),
    (tiff_declaring, ".tif", (100000, 100000)), (bmp_declaring, ".bmp", BOMB),
    (webp_vp8_declaring, ".webp", (16383, 16383)),
    (png_declaring, ".png", (12000, 10000))])
def test_the_header_scan_names_the_bomb(tmp_path, make, suffix, size):
    from erl_derain.data import pipelines, streams

    root = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    bomb = _write(root / "rainy" / f"img9{suffix}", make(*size))
    _write(root / "clean" / "img9.png", _encoded("PNG", (24, 24)))
    for read in (lambda: streams.read_header(str(bomb)), lambda: streams.scan_headers([str(bomb)]),
                 lambda: pipelines.paired_dataset(f"folder:{root}", "train", batch_size=1, crop_size=16,
                                                  training=True)):
        with pytest.raises(pipelines.DatasetError) as info:
            read()
        message = str(info.value)
        assert f"{bomb}: {_too_large(size)}" in message, message
        assert not any(t in message for t in OPENCV_TEXT), message


def test_the_builders_reader_refuses_a_bomb(tmp_path):
    from tfds_builders import paired_common

    for path, size in ((_write(tmp_path / "a.jpg", jpeg_declaring(*BOMB)), BOMB),
                       (_write(tmp_path / "b.jpg", jpeg_declaring(12000, 10000)), (12000, 10000)),
                       (_write(tmp_path / "c.png", png_declaring(*BOMB)), BOMB)):
        for read in (paired_common.read_rgb_keep_jpeg, paired_common.read_rgb):
            with pytest.raises(paired_common.ImagePairError, match=f"{path}: {_too_large(size)}"):
                read(path)
    good = _write(tmp_path / "good.jpg", _encoded("JPEG", (24, 16)))
    assert paired_common.read_rgb_keep_jpeg(good) == good.read_bytes()  # a normal JPEG is kept as it is


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


def _cli(*args: str) -> int:
    from absl import flags

    from erl_derain import cli

    flags.FLAGS.unparse_flags()
    try:
        return cli.main(flags.FLAGS(["erl-derain", *args])) or 0
    finally:
        flags.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A MEMD run trained for one step (tiny widths): the model the CLI tests load."""
    root = tmp_path_factory.mktemp("limits")
    data = make_folder_dataset(root / "data", n=2, size=(16, 16))
    model_dir = root / "run"
    code = _cli("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16", "--batch_size=2",
                "--jit_compile=false", "--noevaluate_after", "--method=memd", "--stage_steps=1", *TINY_FLAGS)
    assert code == 0
    return model_dir


def _photo(folder: Path) -> tuple[Path, tuple[int, int]]:
    """A small real rainy photo (SIRR's real set) when the shared data is there, else a synthetic one."""
    shared = shared_data_dir()
    source = shared / "real_rain" / "135.jpg" if shared else None
    path = folder / "photo.jpg"
    if source is not None and source.is_file():
        path.write_bytes(source.read_bytes())
    else:
        path.write_bytes(_encoded("JPEG", (271, 186)))
    with Image.open(path) as im:
        return path, im.size


def test_cli_derain_lists_the_bombs_and_goes_on(run_cli, tiny_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo, _ = _photo(photos)
    bomb = _write(photos / "bomb.png", real_png(*BOMB))
    huge = _write(photos / "huge.png", png_declaring(100000, 100000))
    out = tmp_path / "out"
    start = time.perf_counter()
    code, stdout, err = run_cli("derain", f"--model_dir={tiny_run}", f"--output_dir={out}", str(photos))
    assert code == 1, err
    assert time.perf_counter() - start < 60
    for path, size in ((bomb, BOMB), (huge, (100000, 100000))):
        assert f"{path}: {_too_large(size)}" in err, err
    assert "Traceback" not in err and not any(t in err for t in OPENCV_TEXT), err
    assert (out / "photo.png").is_file() and not (out / "bomb.png").exists() and not (out / "huge.png").exists()
    assert "2 failed" in stdout + err


def test_cli_max_pixels_lowers_the_limit(run_cli, tiny_run, tmp_path):
    photo, (w, h) = _photo(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli("derain", f"--model_dir={tiny_run}", f"--output_dir={out}", f"--max_pixels={w * h - 1}",
                           str(photo))
    assert code == 1 and f"{photo}: {_too_large((w, h))} pixels" in err and f"--max_pixels={w * h - 1}" in err, err
    assert not (out / "photo.png").exists()
    code, _, err = run_cli("derain", f"--model_dir={tiny_run}", f"--output_dir={out}", f"--max_pixels={w * h}",
                           str(photo))
    assert code == 0, err
    assert (out / "photo.png").is_file()


def test_cli_evaluate_names_the_bomb(run_cli, tiny_run, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    bomb = _write(data / "rainy" / "img9.png", real_png(*BOMB))
    _write(data / "clean" / "img9.png", _encoded("PNG", (24, 24)))
    code, _, err = run_cli("evaluate", f"--model_dir={tiny_run}", f"--dataset=folder:{data}", "--split=test",
                           f"--output={tmp_path / 'eval'}")
    assert code == 1, err
    assert f"{bomb}: {_too_large(BOMB)}" in err and "Traceback" not in err, err


def test_every_reading_verb_has_the_flag():
    from erl_derain import cli

    for verb in ("train", "evaluate", "compare", "derain", "export", "prepare", "synthesize"):
        assert "max_pixels" in cli.verb_flags(verb), verb
    assert "--max_pixels (default: 100000000)" in cli.help_text("derain")


# --------------------------------------------------------------------------------------------------
# Serving: the exported derain_image signature and the client
# --------------------------------------------------------------------------------------------------


def _export_identity(base: Path, **kwargs):
    import keras
    import tensorflow as tf

    from erl_derain import serving

    model = keras.Sequential([keras.layers.Input((None, None, 3)), keras.layers.Identity()])
    path = serving.export_saved_model(model, 1, str(base), metadata={"method": "identity"}, server_config=False,
                                      **kwargs)
    return tf.saved_model.load(path).signatures["derain_image"], Path(path)


@pytest.fixture(scope="module")
def default_signature(tmp_path_factory):
    """derain_image of an identity network exported with the default limit."""
    return _export_identity(tmp_path_factory.mktemp("exp") / "identity")


@pytest.fixture(scope="module")
def small_signature(tmp_path_factory):
    """The same exported with max_pixels=1000."""
    return _export_identity(tmp_path_factory.mktemp("exp") / "identity_small", max_pixels=1000)


def _call(signature, files):
    import tensorflow as tf

    return signature(image_bytes=tf.constant(files))["derained_png_bytes"].numpy()


@pytest.mark.parametrize("data, size", [
    (png_declaring(*BOMB), BOMB), (png_declaring(100000, 100000), (100000, 100000)),
    (png_declaring(2**32 - 1, 2**32 - 1), (2**32 - 1, 2**32 - 1)), (jpeg_declaring(*BOMB), BOMB),
    (jpeg_declaring(65500, 65500, progressive=True), (65500, 65500)), (gif_declaring(*BOMB), BOMB),
    (bmp_declaring(*BOMB), BOMB), (bmp_declaring(20000, -20000), BOMB),
    (bmp_declaring(100000, 100000), (100000, 100000)),
    (webp_vp8_declaring(16383, 16383), (16383, 16383)), (webp_vp8l_declaring(16384, 16384), (16384, 16384)),
    (webp_vp8x_declaring(*BOMB), BOMB), (real_png(*BOMB), BOMB)],
    ids=["png", "png-100000", "png-2**32-1", "jpeg", "jpeg-progressive", "gif", "bmp", "bmp-top-down", "bmp-100000",
         "webp-vp8", "webp-vp8l", "webp-vp8x", "real-png"])
def test_the_exported_signature_refuses_a_bomb(default_signature, data, size):
    import tensorflow as tf

    signature, _ = default_signature
    good = _encoded("PNG", (12, 9))
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _call(signature, [good, data])
    assert f"image_bytes[1]: {_too_large(size)} pixels" in str(info.value), str(info.value)[:2000]
    assert time.perf_counter() - start < 5


def test_the_exported_signature_refuses_a_jpeg_beyond_libjpeg():
    """A JPEG side above 65500 is refused by libjpeg's own header reader (which gives the size to the
    check) before anything is allocated: an error naming the JPEG data, not a decoded image."""
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
        tf.image.extract_jpeg_shape(jpeg_declaring(65535, 65535))


def test_the_exported_signature_keeps_its_limit(default_signature, small_signature):
    import tensorflow as tf

    from erl_derain.serving.layout import EXPORT_INFO

    default, default_path = default_signature
    small, small_path = small_signature
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
        assert len(_call(small, [_encoded(fmt, (40, 25))])) == 1  # exactly the limit
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\]: image too large: 41 x 25"):
            _call(small, [_encoded(fmt, (41, 25))])
        assert len(_call(default, [_encoded(fmt, (41, 25))])) == 1
    assert len(_call(default, [_encoded("PNG", (300, 200)), _encoded("JPEG", (300, 200))])) == 2
    assert json.loads((small_path / EXPORT_INFO).read_text())["max_pixels"] == 1000
    assert json.loads((default_path / EXPORT_INFO).read_text())["max_pixels"] == DEFAULT_LIMIT


@pytest.fixture
def fake_rest_server():
    """A REST :predict endpoint answering derain_image with the image it got (decoded by Pillow, sent
    back as PNG) and recording what it was sent."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            rows = []
            for row in body["instances"]:
                data = base64.b64decode(row["image_bytes"]["b64"])
                buf = io.BytesIO()
                with Image.open(io.BytesIO(data)) as im:
                    im.convert("RGB").save(buf, "PNG")
                rows.append({"b64": base64.b64encode(buf.getvalue()).decode()})
            answer = json.dumps({"predictions": rows}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", received
    httpd.shutdown()
    httpd.server_close()


def test_the_rest_client_refuses_before_sending(fake_rest_server, run_cli, tmp_path):
    from erl_derain.serving import client

    server, received = fake_rest_server
    photos = tmp_path / "photos"
    photos.mkdir()
    photo, (w, h) = _photo(photos)
    bomb = _write(photos / "bomb.png", real_png(*BOMB))
    huge = _write(photos / "huge.jpg", jpeg_declaring(65535, 65535))
    written, skipped, failures = client.derain_files_via_server(server, "m", [str(bomb), str(photo), str(huge)],
                                                                str(tmp_path / "out"))
    assert (written, skipped) == (1, 0)
    assert [p for p, _ in failures] == [str(bomb), str(huge)]
    assert _too_large(BOMB) in failures[0][1] and _too_large((65535, 65535)) in failures[1][1]
    assert len(received) == 1  # only the photo was sent
    assert base64.b64decode(received[0]["instances"][0]["image_bytes"]["b64"]) == photo.read_bytes()
    assert Image.open(tmp_path / "out" / "photo.png").size == (w, h)

    # The same through `erl-derain derain --server`, with the limit lowered below the photo.
    received.clear()
    code, _, err = run_cli("derain", f"--server={server}", "--model_name=m", f"--output_dir={tmp_path / 'out2'}",
                           f"--max_pixels={w * h - 1}", str(photos))
    assert code == 1 and f"{photo}: {_too_large((w, h))}" in err and _too_large(BOMB) in err, err
    assert received == [] and "Traceback" not in err
