"""The loop over photo files shared by local and TF Serving de-raining (erl_derain.photos): output
names, skipping, failures, fatal errors, the printed lines and the summary."""

import os

import pytest

from erl_derain import photos


def test_output_names():
    assert photos.output_path("/in/a.photo.JPG", "/out") == "/out/a.photo.png"
    assert photos.output_path("/in/a.JPG", "/out", "same") == "/out/a.JPG"
    assert photos.output_path("/in/a.png", "/out", "jpg") == "/out/a.jpg"
    assert photos.output_path("/in/a.png", "/out", ".tif") == "/out/a.tif"
    assert photos.plan(["x/b.png", "y/c"], "o", "webp") == [("x/b.png", "o/b.webp"), ("y/c", "o/c.webp")]


def test_derain_photos_skips_collects_failures_and_prints(tmp_path, capsys):
    files = [str(tmp_path / n) for n in ("a.png", "b.jpg", "bad.png", "kept.png")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.png").write_bytes(b"old")
    seen = []

    def run(path, out_path):
        seen.append((os.path.basename(path), os.path.basename(out_path)))
        if "bad" in path:
            raise ValueError(f"{path}: not an image")
        open(out_path, "wb").close()
        return "3x2, test"

    written, skipped, failures = photos.derain_photos(files, str(out), run)
    assert (written, skipped) == (2, 1) and failures == [(files[2], f"{files[2]}: not an image")]
    assert seen == [("a.png", "a.png"), ("b.jpg", "b.png"), ("bad.png", "bad.png")]  # kept.png skipped
    assert (out / "kept.png").read_bytes() == b"old"
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"  {files[0]} (3x2, test) -> {out / 'a.png'}",
                                         f"  {files[1]} (3x2, test) -> {out / 'b.png'}"]
    assert captured.err.splitlines() == [f"  FAILED {files[2]}: {files[2]}: not an image"]

    # --overwrite runs kept.png too; the output folder is created when missing
    written, skipped, _ = photos.derain_photos(files[3:], str(out), run, overwrite=True)
    assert (written, skipped) == (1, 0)
    photos.derain_photos(files[:1], str(tmp_path / "new" / "dir"), run)
    assert (tmp_path / "new" / "dir" / "a.png").exists()


def test_fatal_errors_stop_the_loop(tmp_path):
    calls = []

    def run(path, out_path):
        calls.append(path)
        raise ConnectionError("no server")

    with pytest.raises(ConnectionError, match="no server"):
        photos.derain_photos(["a.png", "b.png"], str(tmp_path), run, fatal=(ConnectionError,))
    assert calls == ["a.png"]


def test_report(capsys):
    assert photos.report(2, 1, [], "out") == 0
    assert capsys.readouterr().out == "De-rained 2 image(s) into out; 1 skipped (exist, use --overwrite); 0 failed\n"
    assert photos.report(0, 0, [("p.png", "boom")], "out", via="host:8501") == 1
    captured = capsys.readouterr()
    assert captured.out == ("De-rained 0 image(s) into out via host:8501; 0 skipped (exist, use --overwrite); "
                            "1 failed\n")
    assert captured.err == "  failed: p.png: boom\n"
