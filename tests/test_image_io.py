"""Image formats at the edges: modes, bit depths, alpha, EXIF orientation, output format rules.

Input files are written with Pillow/OpenCV directly (not with ``write_image``), and ``derain_file``
with an identity "model" must give them back within each format's precision.
"""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from erl_derain.data.image_io import (ImageMeta, apply_orientation, check_writable, load_rgb, read_image, save_rgb,
                                      write_image)
from erl_derain.inference import derain_file

ORIENTATION = 0x0112


def identity(x):
    return x


def _derain(src, dst, **kw):
    return derain_file(identity, 8, str(src), str(dst), **kw)


def _photo(h=24, w=32, seed=0) -> np.ndarray:
    """A smooth, asymmetric uint8 RGB photo (lossy codecs keep it to within a few levels)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    img = np.stack([40 + 150 * xx / w, 60 + 120 * yy / h, 120 + 60 * np.sin((xx + 2 * yy) / 7)], -1)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).round().astype(np.uint8)


def _png_16bit_grey_alpha(path, grey, alpha):
    """A 16-bit grey+alpha PNG (colour type 4), which neither Pillow nor OpenCV can write."""
    h, w = grey.shape
    rows = np.stack([grey, alpha], -1).astype(">u2").reshape(h, w * 2)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("ext,tol", [(".png", 0), (".bmp", 0), (".tif", 0), (".jpg", 6), (".webp", 8)])
def test_8bit_rgb_round_trips_through_identity_model(tmp_path, ext, tol):
    src = _photo()
    Image.fromarray(src).save(tmp_path / f"in{ext}")
    rgb, meta = read_image(tmp_path / f"in{ext}")
    assert rgb.dtype == np.float32 and rgb.shape == (24, 32, 3) and (meta.mode, meta.bit_depth) == ("RGB", 8)
    info = _derain(tmp_path / f"in{ext}", tmp_path / f"out{ext}")
    assert info["mode"] == "RGB" and info["bit_depth"] == 8 and info["tiles"] == (1, 1)
    with Image.open(tmp_path / f"out{ext}") as out:
        assert out.mode == "RGB" and out.size == (32, 24)
        out = np.asarray(out).astype(int)
    with Image.open(tmp_path / f"in{ext}") as stored:  # what the (lossy) input file holds
        stored = np.asarray(stored).astype(int)
    if tol == 0:  # lossless: what was read is written back exactly
        np.testing.assert_array_equal(out, src)
    else:  # one more lossy generation at quality 95
        assert np.abs(out - stored).mean() < tol / 3 and np.abs(out - stored).max() <= tol * 3


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp"])
def test_grey_in_grey_out(tmp_path, ext):
    grey = _photo()[..., 1]
    Image.fromarray(grey).save(tmp_path / f"g{ext}")
    rgb, meta = read_image(tmp_path / f"g{ext}")
    assert meta.mode == "L" and rgb.shape == (24, 32, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # the network sees three equal channels
    _derain(tmp_path / f"g{ext}", tmp_path / f"o{ext}")
    with Image.open(tmp_path / f"o{ext}") as out:
        assert out.mode == "L"
        out = np.asarray(out).astype(int)
    with Image.open(tmp_path / f"g{ext}") as src:  # compare with what was stored (JPEG is lossy)
        stored = np.asarray(src).astype(int)
    assert np.abs(out - stored).max() <= (0 if ext != ".jpg" else 4)


def test_grey_output_is_bt601_luma():
    import tempfile

    rgb = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.2, 0.2]]], np.float32)
    with tempfile.TemporaryDirectory() as d:
        write_image(f"{d}/y.png", rgb, ImageMeta(mode="L"))
        y = np.asarray(Image.open(f"{d}/y.png"))
    np.testing.assert_array_equal(y, [[76, 150, 29, 51]])  # round(255 * (.299, .587, .114, .2))


@pytest.mark.parametrize("ext", [".png", ".tif", ".webp"])
def test_rgba_keeps_alpha_exactly(tmp_path, ext):
    src = np.dstack([_photo(), np.random.default_rng(3).integers(0, 256, (24, 32), dtype=np.uint8)])
    kw = {"lossless": True} if ext == ".webp" else {}
    Image.fromarray(src).save(tmp_path / f"a{ext}", **kw)
    rgb, meta = read_image(tmp_path / f"a{ext}")
    assert meta.mode == "RGBA" and meta.alpha.dtype == np.uint8
    np.testing.assert_array_equal(meta.alpha, src[..., 3])
    _derain(tmp_path / f"a{ext}", tmp_path / f"o{ext}")
    with Image.open(tmp_path / f"o{ext}") as out:
        assert out.mode == "RGBA"
        out = np.asarray(out)
    np.testing.assert_array_equal(out[..., 3], src[..., 3])
    if ext != ".webp":  # written lossy
        np.testing.assert_array_equal(out[..., :3], src[..., :3])


def test_grey_alpha_png(tmp_path):
    src = np.dstack([_photo()[..., 0], np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)])
    Image.fromarray(src).save(tmp_path / "la.png")
    _, meta = read_image(tmp_path / "la.png")
    assert meta.mode == "LA"
    _derain(tmp_path / "la.png", tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as out:
        assert out.mode == "LA"
        np.testing.assert_array_equal(np.asarray(out), src)


@pytest.mark.parametrize("channels,ext", [(3, ".png"), (1, ".png"), (4, ".png"), (3, ".tif"), (1, ".tif")])
def test_16bit_kept_exactly(tmp_path, channels, ext):
    rng = np.random.default_rng(channels)
    src = rng.integers(0, 65536, (24, 32, channels), dtype=np.uint16)
    src[0, :4, 0] = [0, 1, 65534, 65535]
    assert cv2.imwrite(str(tmp_path / f"in{ext}"), src if channels > 1 else src[..., 0])  # BGR(A) order
    rgb, meta = read_image(tmp_path / f"in{ext}")
    assert meta.bit_depth == 16 and meta.mode == {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if channels >= 3:  # straight from uint16 to float32: k / 65535, no 8-bit step
        np.testing.assert_array_equal(rgb, src[..., 2::-1].astype(np.float32) / np.float32(65535))
    _derain(tmp_path / f"in{ext}", tmp_path / f"out{ext}")
    out = cv2.imread(str(tmp_path / f"out{ext}"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, src if channels > 1 else src[..., 0])


def test_16bit_grey_alpha_png(tmp_path):
    rng = np.random.default_rng(5)
    grey, alpha = rng.integers(0, 65536, (2, 6, 7), dtype=np.uint16)
    _png_16bit_grey_alpha(tmp_path / "la16.png", grey, alpha)
    rgb, meta = read_image(tmp_path / "la16.png")
    assert (meta.mode, meta.bit_depth) == ("LA", 16)
    np.testing.assert_array_equal(meta.alpha, alpha)
    np.testing.assert_array_equal(rgb[..., 1], grey / np.float32(65535))
    _derain(tmp_path / "la16.png", tmp_path / "o.png")
    out = cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED)  # written as RGBA, equal colours
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 3], alpha)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_palette_png_becomes_rgb_or_rgba(tmp_path):
    src = _photo()
    pal = Image.fromarray(src).quantize(16)
    pal.save(tmp_path / "p.png")
    rgb, meta = read_image(tmp_path / "p.png")
    assert meta.mode == "RGB"
    np.testing.assert_array_equal(np.round(rgb * 255).astype(np.uint8), np.asarray(pal.convert("RGB")))
    pal.save(tmp_path / "pt.png", transparency=0)
    _, meta = read_image(tmp_path / "pt.png")
    assert meta.mode == "RGBA" and set(np.unique(meta.alpha)) <= {0, 255} and (meta.alpha == 0).any()


def _oriented_stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as a camera stores them with this orientation tag (the inverse of the display transform)."""
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[orientation]
    return apply_orientation(upright, inverse)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_matches_pillow_and_comes_out_upright(tmp_path, orientation):
    upright = _photo(20, 30)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "TestMake"
    Image.fromarray(_oriented_stored(upright, orientation)).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as im:  # Pillow's own transpose agrees with the hand-written one
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im)), upright)
    rgb, meta = read_image(tmp_path / "o.png")
    assert meta.orientation == orientation
    np.testing.assert_array_equal(np.round(rgb * 255).astype(np.uint8), upright)
    np.testing.assert_array_equal(np.round(load_rgb(tmp_path / "o.png") * 255).astype(np.uint8), upright)
    _derain(tmp_path / "o.png", tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert ORIENTATION not in out.getexif() and out.getexif().get(0x010F) == "TestMake"
        np.testing.assert_array_equal(np.asarray(out), upright)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_comes_out_upright(tmp_path, orientation):
    upright = _photo(24, 40)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(_oriented_stored(upright, orientation)).save(tmp_path / "r.jpg", exif=exif, quality=95)
    rgb, meta = read_image(tmp_path / "r.jpg")
    assert rgb.shape == (24, 40, 3) and meta.orientation == orientation
    assert np.abs(rgb * 255 - upright).mean() < 3
    info = _derain(tmp_path / "r.jpg", tmp_path / "out.jpg")
    assert (info["width"], info["height"], info["orientation"]) == (40, 24, orientation)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (40, 24) and out.getexif().get(ORIENTATION, 1) == 1
        assert np.abs(np.asarray(out).astype(int) - upright).mean() < 4


@pytest.mark.skipif(not hasattr(cv2, "imencodeWithMetadata"), reason="OpenCV without metadata writing")
def test_16bit_png_orientation(tmp_path):
    upright = np.random.default_rng(2).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    ok, buf = cv2.imencodeWithMetadata(".png", _oriented_stored(upright, 6)[..., ::-1].copy(),
                                       [cv2.IMAGE_METADATA_EXIF], [np.frombuffer(exif.tobytes()[6:], np.uint8)])
    assert ok
    (tmp_path / "o16.png").write_bytes(buf.tobytes())
    rgb, meta = read_image(tmp_path / "o16.png")
    assert (meta.orientation, meta.bit_depth) == (6, 16)
    np.testing.assert_array_equal(rgb, upright / np.float32(65535))
    _derain(tmp_path / "o16.png", tmp_path / "out.png")
    out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out[..., ::-1], upright)
    with Image.open(tmp_path / "out.png") as im:
        assert ORIENTATION not in im.getexif()


def test_formats_that_cannot_hold_the_data_raise_before_running_the_model(tmp_path):
    calls = []

    def model(x):
        calls.append(1)
        return x

    Image.fromarray(np.dstack([_photo(), np.full((24, 32), 9, np.uint8)])).save(tmp_path / "a.png")
    cv2.imwrite(str(tmp_path / "d16.png"), np.zeros((4, 4, 3), np.uint16) + 300)
    for src, dst, words in (("a.png", "a.jpg", "alpha"), ("a.png", "a.bmp", "alpha"), ("d16.png", "d.jpg", "16-bit"),
                            ("d16.png", "d.webp", "16-bit"), ("a.png", "a.gif", "cannot write")):
        with pytest.raises(ValueError, match=words) as e:
            derain_file(model, 8, str(tmp_path / src), str(tmp_path / dst))
        assert str(tmp_path / dst) in str(e.value)
        assert not (tmp_path / dst).exists()
    assert not calls
    assert check_writable(str(tmp_path / "x.TIFF"), read_image(tmp_path / "d16.png")[1]) == "TIFF"


def test_unreadable_files_raise_value_error_naming_them(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a JPEG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    Image.fromarray(_photo()).save(tmp_path / "full.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    for path in (bad, empty, truncated, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=str(path.name)):
            read_image(path)
        with pytest.raises(ValueError, match=str(path.name)):
            load_rgb(path)


def test_writes_are_atomic_and_reject_bad_pixels(tmp_path):
    out = tmp_path / "sub" / "x.png"
    save_rgb(out, np.full((3, 4, 3), 0.5, np.float32))
    assert load_rgb(out).shape == (3, 4, 3)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="x.png.*NaN"):
        write_image(out, np.full((3, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="x.png.*HxWx3"):
        write_image(out, np.zeros((3, 4), np.float32))
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["x.png"]


def test_save_rgb_load_rgb_keep_their_behaviour(tmp_path):
    img = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    save_rgb(tmp_path / "s.png", img)
    np.testing.assert_array_equal(load_rgb(tmp_path / "s.png"), np.floor(img * 255 + 0.5) / np.float32(255))
    save_rgb(tmp_path / "u", (img * 255).astype(np.uint8))  # no extension: PNG
    with Image.open(tmp_path / "u") as im:
        assert im.format == "PNG"
    Image.fromarray(_photo()[..., :2]).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png").shape == (24, 32, 3)  # grey + alpha -> three equal channels


def test_icc_profile_kept_when_it_describes_the_written_pixels(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_photo()).save(tmp_path / "c.jpg", icc_profile=icc)
    for ext in (".png", ".jpg", ".tif"):
        _derain(tmp_path / "c.jpg", tmp_path / f"o{ext}")
        with Image.open(tmp_path / f"o{ext}") as out:
            assert out.info.get("icc_profile") == icc
    cmyk = icc[:16] + b"CMYK" + icc[20:]  # a CMYK source's profile does not describe RGB output
    Image.fromarray(_photo()).convert("CMYK").save(tmp_path / "k.jpg", icc_profile=cmyk)
    rgb, meta = read_image(tmp_path / "k.jpg")
    assert meta.mode == "RGB" and meta.icc_profile is None and rgb.shape == (24, 32, 3)
