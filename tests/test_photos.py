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
                            "1 failed (listed above)\n")
    assert captured.err == ""  # the loop listed the failure when it happened: once, not twice
    assert photos.report(1, 0, [], "out", interrupted=True) == photos.INTERRUPTED == 130
    assert capsys.readouterr().out.startswith("Interrupted: De-rained 1 image(s) into out")


# -- issue 26: nothing lost ---------------------------------------------------------------------------


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_colliding_outputs_keep_their_sub_folders_and_extensions(tmp_path):
    """x.jpg / x.png in one folder and d1/p.jpg / d2/p.jpg would write one output each pair: they are
    told apart before any work (today's code planned the same output twice, the second 'skipped')."""
    x_jpg, x_png = _touch(tmp_path / "in" / "x.jpg"), _touch(tmp_path / "in" / "x.png")
    p1, p2 = _touch(tmp_path / "in" / "d1" / "p.jpg"), _touch(tmp_path / "in" / "d2" / "p.jpg")
    other = _touch(tmp_path / "in" / "other.jpg")
    out = str(tmp_path / "out")
    jobs = photos.plan([x_jpg, x_png, p1, p2, other, other], out)  # a file given twice is one input
    assert jobs == [(x_jpg, f"{out}/x.jpg.png"), (x_png, f"{out}/x.png.png"), (p1, f"{out}/d1/p.png"),
                    (p2, f"{out}/d2/p.png"), (other, f"{out}/other.png")]
    photos.check_plan(jobs, out)
    seen = []

    def run(path, out_path):
        seen.append(out_path)
        open(out_path, "wb").close()
        return "ok"

    written, skipped, failures = photos.derain_photos([x_jpg, x_png, p1, p2, other], out, run)
    assert (written, skipped, failures) == (5, 0, []) and len(set(seen)) == 5
    assert (tmp_path / "out" / "d1" / "p.png").exists() and (tmp_path / "out" / "d2" / "p.png").exists()
    # 'same' keeps each extension: x.jpg and x.png do not collide then
    assert [o for _, o in photos.plan([x_jpg, x_png], out, "same")] == [f"{out}/x.jpg", f"{out}/x.png"]
    # what still collides after that is refused with the list, before any work
    clash = _touch(tmp_path / "in" / "x.jpg.png")
    with pytest.raises(photos.PlanError, match=r"x.jpg.png <- .*x.jpg, .*x.jpg.png"):
        photos.check_plan(photos.plan([x_jpg, x_png, clash], out), out)


def test_an_output_that_is_an_input_is_refused_and_the_output_folder_is_no_input(tmp_path):
    """derain --output_dir=<the input folder>: today's code planned photos/a.png -> photos/a.png
    ('skipped (exist, use --overwrite)', and --overwrite replaced the original) and took earlier
    outputs as inputs."""
    folder = tmp_path / "photos"
    a_png, b_jpg = _touch(folder / "a.png"), _touch(folder / "b.jpg")
    with pytest.raises(photos.PlanError, match=r"(?s)replace an input.*a\.png"):
        photos.check_plan(photos.plan([a_png], str(folder)), str(folder))
    with pytest.raises(photos.PlanError, match=r"replace an input"):
        photos.check_plan(photos.plan([a_png, b_jpg], str(folder), "jpg"), str(folder), overwrite=True)
    # a folder argument never yields the output folder's own files (earlier outputs)
    files, failures, excluded = photos.expand_inputs([str(folder)], str(folder))
    assert files == [] and failures == [] and sorted(excluded) == [a_png, b_jpg]
    out = folder / "derained"
    _touch(out / "a.png")
    files, _, excluded = photos.expand_inputs([str(folder), str(out)], str(out))
    assert files == [a_png, b_jpg] and excluded == [str(out / "a.png")]


def test_missing_inputs_are_failures_of_their_own(tmp_path):
    good = _touch(tmp_path / "a.jpg")
    (tmp_path / "empty").mkdir()
    files, failures, _ = photos.expand_inputs([good, str(tmp_path / "missing.jpg"), str(tmp_path / "empty")])
    assert files == [good]
    assert failures == [(str(tmp_path / "missing.jpg"), "no such file or folder"),
                        (str(tmp_path / "empty"), failures[1][1])] and "no images" in failures[1][1]


def test_unwritable_output_folders_are_refused_before_any_work(tmp_path):
    """A path under a regular file, a file as the folder (both refused for root too), and a folder
    the probe write fails in. Today's check_plan refused nothing: os.makedirs raised later."""
    jobs = photos.plan([_touch(tmp_path / "a.jpg")], "unused")
    blocker = _touch(tmp_path / "file")
    with pytest.raises(photos.PlanError, match=r"--output_dir=.*file/sub.*is a file, so the folder"):
        photos.check_plan(jobs, str(tmp_path / "file" / "sub"))
    with pytest.raises(photos.PlanError, match=r"--output_dir=.*is a file, not a folder"):
        photos.check_plan(jobs, blocker)


def test_a_folder_refusing_writes_is_refused_up_front(tmp_path):
    """os.access plus a probe file: /sys refuses new files even to root (os.access says yes)."""
    target = "/sys/erl_derain_probe_test/out"
    if not os.path.isdir("/sys"):
        pytest.skip("no /sys here")
    try:
        open("/sys/.erl_derain_probe_check", "x").close()
    except OSError:
        pass
    else:  # pragma: no cover (a writable /sys: nothing to test with)
        os.unlink("/sys/.erl_derain_probe_check")
        pytest.skip("/sys is writable here")
    with pytest.raises(photos.PlanError, match=r"--output_dir=/sys/erl_derain_probe_test/out: /sys is not writable"):
        photos.check_plan(photos.plan([_touch(tmp_path / "a.jpg")], target), target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder anyway (permissions do not "
                    "bind root); the /sys test above checks the probe that catches it")
def test_a_read_only_folder_is_refused_up_front(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(photos.PlanError, match="is not writable"):
            photos.check_plan(photos.plan([_touch(tmp_path / "a.jpg")], str(ro)), str(ro))
    finally:
        ro.chmod(0o755)


def test_ctrl_c_stops_the_loop_with_what_was_done(tmp_path):
    files = [_touch(tmp_path / f"{n}.jpg") for n in "abc"]

    def run(path, out_path):
        if path.endswith("b.jpg"):
            raise KeyboardInterrupt
        open(out_path, "wb").close()
        return "ok"

    with pytest.raises(photos.Interrupted) as info:
        photos.derain_photos(files, str(tmp_path / "out"), run)
    assert (info.value.written, info.value.skipped, info.value.failures) == (1, 0, [])
    assert isinstance(info.value, KeyboardInterrupt)
