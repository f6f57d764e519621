"""Videos (`erl-derain derain clip.mp4`, erl_derain/video.py): frame count, frame rate and size read back
with OpenCV, --every_nth / --max_frames, --temporal against a hand-computed mean, streaming memory, bad files."""

import os
import tracemalloc

import cv2
import numpy as np
import pytest

from erl_derain import video
from erl_derain.video import TemporalMean, VideoError

from .conftest import TINY_FLAGS, make_folder_dataset


def write_clip(path, frames=10, size=(48, 64), fps=12.5, codec="FFV1", seed=0):
    """A clip of random-texture frames (BGR uint8), written with OpenCV; returns the frames."""
    h, w = size
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened()
    out = []
    for _ in range(frames):
        f = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        writer.write(f)
        out.append(f)
    writer.release()
    return out


def read_back(path):
    """(frames BGR uint8, fps, width, height) as OpenCV reads them."""
    cap = cv2.VideoCapture(str(path))
    fps, w, h = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames, fps, w, h


def identity(rgb):
    return rgb.copy()


def _u8(x):
    return np.floor(np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def test_temporal_mean_against_hand_computed_windows():
    frames = [np.full((2, 2), float(i), np.float32) for i in range(7)]
    smooth = TemporalMean(3)
    out = []
    for f in frames:
        out += smooth.push(f)
        assert len(smooth.buffer) <= 3
    out += smooth.flush()
    expected = [0.5, 1, 2, 3, 4, 5, 5.5]  # windows cut at the ends: (0+1)/2 ... (5+6)/2
    assert [float(o[0, 0]) for o in out] == expected
    smooth, out = TemporalMean(5), []
    for f in frames:
        out += smooth.push(f)
    out += smooth.flush()
    assert [float(o[0, 0]) for o in out] == pytest.approx([1, 1.5, 2, 3, 4, 4.5, 5])
    assert TemporalMean(3).push(frames[0]) == []  # the first frame waits for the second


@pytest.mark.parametrize("bad,flag", [(dict(every_nth=0), "--every_nth=0"), (dict(max_frames=-1), "--max_frames=-1"),
                                      (dict(temporal=2), "--temporal=2"), (dict(temporal=0), "--temporal=0"),
                                      (dict(video_codec="h264x"), "--video_codec='h264x'")])
def test_bad_settings_name_their_flag(bad, flag):
    with pytest.raises(VideoError, match=flag.replace("'", ".")):
        video.check_settings(**bad)


def test_output_names_and_codecs():
    assert video.output_path("/a/clip.MP4", "/o") == ("/o/clip.mp4", "mp4v")
    assert video.output_path("/a/clip.avi", "/o") == ("/o/clip.avi", "MJPG")
    assert video.output_path("/a/clip.webm", "/o") == ("/o/clip.mp4", "mp4v")
    assert video.output_path("/a/clip.mkv", "/o", "FFV1") == ("/o/clip.mkv", "FFV1")
    assert video.is_video("x.MOV") and not video.is_video("x.png")


def test_same_size_rate_and_count_and_lossless_identity(tmp_path):
    frames = write_clip(tmp_path / "clip.mkv", frames=11, fps=12.5)
    info = video.derain_video(tmp_path / "clip.mkv", tmp_path / "out.mkv", identity, video_codec="FFV1")
    out, fps, w, h = read_back(tmp_path / "out.mkv")
    assert (len(out), fps, w, h) == (11, 12.5, 64, 48)
    assert info["frames_read"] == info["frames_written"] == 11
    for a, b in zip(out, frames):
        np.testing.assert_array_equal(a, b)  # identity network, lossless codec: the very frames
    assert not [f for f in os.listdir(tmp_path) if "partial" in f]


def test_temporal_output_is_the_mean_of_neighbouring_outputs(tmp_path):
    frames = write_clip(tmp_path / "clip.mkv", frames=8)
    video.derain_video(tmp_path / "clip.mkv", tmp_path / "out.mkv", identity, video_codec="FFV1", temporal=3)
    out, _, _, _ = read_back(tmp_path / "out.mkv")
    assert len(out) == 8
    f = [x.astype(np.float64) / 255 for x in frames]
    for t in range(8):
        window = f[max(0, t - 1):t + 2]
        expected = _u8(sum(window) / len(window))
        assert np.abs(out[t].astype(int) - expected.astype(int)).max() <= 1  # float32 sums vs float64 here


def test_every_nth_and_max_frames(tmp_path):
    frames = write_clip(tmp_path / "clip.mkv", frames=10, fps=12.0)
    video.derain_video(tmp_path / "clip.mkv", tmp_path / "nth.mkv", identity, video_codec="FFV1", every_nth=3)
    out, fps, _, _ = read_back(tmp_path / "nth.mkv")
    assert len(out) == 4 and fps == pytest.approx(4.0)  # frames 0, 3, 6, 9 at 12 / 3 fps
    for a, k in zip(out, (0, 3, 6, 9)):
        np.testing.assert_array_equal(a, frames[k])
    video.derain_video(tmp_path / "clip.mkv", tmp_path / "max.mkv", identity, video_codec="FFV1", max_frames=4,
                       every_nth=2)
    out, fps, _, _ = read_back(tmp_path / "max.mkv")
    assert len(out) == 2 and fps == pytest.approx(6.0)
    np.testing.assert_array_equal(out[1], frames[2])


def test_memory_does_not_grow_with_the_clip(tmp_path):
    write_clip(tmp_path / "long.mkv", frames=150, size=(48, 64))
    tracemalloc.start()
    try:
        video.derain_video(tmp_path / "long.mkv", tmp_path / "out.mkv", identity, video_codec="FFV1", temporal=5,
                           stream=open(os.devnull, "w"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frame_bytes = 48 * 64 * 3 * 4  # one float32 frame
    assert peak < 30 * frame_bytes, peak  # 150 frames held would be 150 x (plus the uint8 copies)


def test_unreadable_video_is_named(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"this is no video")
    with pytest.raises(VideoError, match="bad.mp4"):
        video.derain_video(tmp_path / "bad.mp4", tmp_path / "out.mp4", identity)
    assert sorted(os.listdir(tmp_path)) == ["bad.mp4"]  # no output, no partial file


def test_derain_cli_clips_and_photos(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    code, _, err = run_cli("train", f"--model_dir={tmp_path / 'run'}", f"--dataset=folder:{data}", "--crop_size=16",
                           "--batch_size=2", "--jit_compile=false", "--noevaluate_after", "--method=memd",
                           "--stage_steps=1", *TINY_FLAGS)
    assert code == 0, err
    write_clip(tmp_path / "clip.mp4", frames=9, size=(36, 52), fps=10.0, codec="mp4v")
    (tmp_path / "broken.avi").write_bytes(b"\x00" * 100)
    cv2.imwrite(str(tmp_path / "photo.png"), np.full((20, 24, 3), 100, np.uint8))
    out_dir = tmp_path / "out"
    code, out, err = run_cli("derain", f"--model_dir={tmp_path / 'run'}", f"--output_dir={out_dir}",
                             str(tmp_path / "clip.mp4"), str(tmp_path / "broken.avi"), str(tmp_path / "photo.png"),
                             "--progress_every=4")
    assert code == 1  # the broken clip failed, by name; the others were written
    assert "broken.avi" in err and (out_dir / "photo.png").exists()
    frames, fps, w, h = read_back(out_dir / "clip.mp4")
    assert (len(frames), fps, w, h) == (9, 10.0, 52, 36)
    assert "audio" in out and "not kept" in out
    assert "frame 4/9" in out and "frame 9/9" in out and "frames/s" in out and "\r" not in out
    assert sorted(os.listdir(out_dir)) == ["clip.mp4", "photo.png"]
    # an existing output is kept unless --overwrite
    code, out, _ = run_cli("derain", f"--model_dir={tmp_path / 'run'}", f"--output_dir={out_dir}",
                           str(tmp_path / "clip.mp4"))
    assert code == 0 and "1 skipped" in out
    # bad flags and missing clips stop before any work, naming them
    code, _, err = run_cli("derain", f"--model_dir={tmp_path / 'run'}", f"--output_dir={out_dir}", "--temporal=4",
                           str(tmp_path / "clip.mp4"))
    assert code == 2 and "--temporal=4" in err
    code, _, err = run_cli("derain", f"--model_dir={tmp_path / 'run'}", str(tmp_path / "nope.mp4"))
    assert code == 1 and "nope.mp4: no such file" in err


def test_the_video_loop_progress_and_metrics_import_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys; import erl_derain.video, erl_derain.progress, erl_derain.quality; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
