"""The loop over video files of ``erl-derain derain`` (OpenCV in, OpenCV out, one frame at a time); no
TensorFlow at import.

``derain_videos(files, output_dir, run_frame, ...)`` is the video sibling of ``photos.derain_photos``:
each ``clip.<ext>`` is read with OpenCV (any container and codec its FFmpeg reads) and written to
``output_dir/clip.<ext>`` (``.mp4``, ``.m4v``, ``.mov``, ``.mkv`` with MPEG-4 part 2 ``mp4v``, ``.avi``
with Motion-JPEG; other containers become ``.mp4``; ``--video_codec`` picks another FourCC, e.g.
``FFV1`` for lossless ``.mkv`` / ``.avi``) of the same size, frame rate and frame count. Frames stream
through: read, ``run_frame`` (RGB float32 HxWx3 in [0, 1] -> same; the local runner is
``inference.derain_image`` with the model's tiles), written; memory does not grow with the length
(with ``--temporal=N``, N frames are held). The output is written to a hidden partial file next to
it and renamed at the end, so an interrupted run leaves no truncated clip that a re-run would skip.

* ``every_nth`` (``--every_nth``): keep every n-th frame (frames 0, n, 2n, ...) at ``fps / n``, a
  preview as long as the clip; ``max_frames`` (``--max_frames``): read only the first frames.
* ``temporal`` (``--temporal=N``, odd, default 1 = off): each output frame is the mean of the network's
  outputs for the N frames centred on it (fewer at the clip's ends), which damps frame-to-frame
  flicker of the network's output at the cost of ghosting where things move (``benchmarks/video.py``
  measures both).
* The audio track is not kept (OpenCV reads and writes pictures only); the summary line says so.
* A progress bar (``erl_derain.progress``) shows frames per second and the time left; in a log, one
  line every ``progress_every``.
* A file OpenCV cannot open, or whose first frame cannot be read, is a failure of that file (named);
  the other files go on.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Callable, Iterable

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
                    ".mts", ".m2ts", ".ogv")
# The container of the output (the input's when OpenCV's FFmpeg can write it) and its default FourCC.
WRITERS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
AUDIO_NOTE = "audio not kept"

RunFrame = Callable[[np.ndarray], np.ndarray]


class VideoError(ValueError):
    """A video that cannot be read or written (the message names the file) or a bad video flag."""


def is_video(path: str) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def check_settings(every_nth: int = 1, max_frames: int = 0, temporal: int = 1, video_codec: str | None = None) -> None:
    """``VideoError`` naming the flag of a bad setting."""
    if int(every_nth) < 1:
        raise VideoError(f"--every_nth={every_nth} must be at least 1 (1: every frame)")
    if int(max_frames) < 0:
        raise VideoError(f"--max_frames={max_frames} must be 0 (the whole clip) or positive")
    if int(temporal) < 1 or int(temporal) % 2 == 0:
        raise VideoError(f"--temporal={temporal} must be an odd number of frames (1: off; 3, 5, ...: the mean of the "
                         "network's outputs over that many frames centred on each frame)")
    if video_codec is not None and len(video_codec) != 4:
        raise VideoError(f"--video_codec={video_codec!r} must be a four-character FourCC, e.g. mp4v, MJPG or FFV1")


def output_path(path: str, output_dir: str, video_codec: str | None = None) -> tuple[str, str]:
    """``(output file, FourCC)``: ``output_dir/<stem><ext>`` with the input's extension when OpenCV writes
    that container (``WRITERS``), else ``.mp4``."""
    stem, ext = os.path.splitext(os.path.basename(os.fspath(path)))
    ext = ext.lower() if ext.lower() in WRITERS else ".mp4"
    return os.path.join(output_dir, stem + ext), video_codec or WRITERS[ext]


class TemporalMean:
    """The centred moving mean over ``n`` (odd) consecutive frames of a stream: ``push(frame)`` returns
    the frames whose window is complete (their mean), ``flush()`` those left at the end (windows cut
    at the clip's ends). Holds at most ``n`` frames."""

    def __init__(self, n: int):
        if n < 1 or n % 2 == 0:
            raise VideoError(f"--temporal={n} must be an odd number of frames")
        self.k = n // 2
        self.buffer: deque = deque()  # (index, frame), the frames of the next emitted frame's window
        self.received = 0
        self.emitted = 0

    def _mean(self, last: int) -> np.ndarray:
        frames = [f for i, f in self.buffer if self.emitted - self.k <= i <= last]
        total = frames[0].astype(np.float32, copy=True)
        for f in frames[1:]:
            total += f
        return total / np.float32(len(frames))

    def _drop_old(self) -> None:
        while self.buffer and self.buffer[0][0] < self.emitted - self.k:
            self.buffer.popleft()

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.buffer.append((self.received, frame))
        self.received += 1
        out = []
        while self.emitted + self.k <= self.received - 1:
            out.append(self._mean(self.emitted + self.k))
            self.emitted += 1
            self._drop_old()
        return out

    def flush(self) -> list[np.ndarray]:
        out = []
        while self.emitted < self.received:
            out.append(self._mean(self.received - 1))
            self.emitted += 1
            self._drop_old()
        return out


def _to_uint8_bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.floor(np.clip(rgb, 0.0, 1.0)[..., ::-1] * 255.0 + 0.5).astype(np.uint8))


def probe(path: str) -> dict:
    """``width``, ``height``, ``fps``, ``frames`` (the container's count, 0 when unknown) of a video;
    ``VideoError`` naming the file when OpenCV cannot open it."""
    import cv2

    cap = cv2.VideoCapture(os.fspath(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open it as a video")
        return {"width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                "frames": max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))}
    finally:
        cap.release()


def derain_video(in_path: str, out_path: str, run_frame: RunFrame, *, video_codec: str | None = None,
                 every_nth: int = 1, max_frames: int = 0, temporal: int = 1, progress_every="30s",
                 stream=None) -> dict:
    """De-rain one clip (module docstring) into ``out_path``; returns ``width``, ``height``, ``fps``
    (the input's), ``output_fps``, ``frames_read``, ``frames_written``, ``seconds`` and
    ``frames_per_second`` (frames written per second of wall time)."""
    import cv2

    from erl_derain.progress import Progress

    check_settings(every_nth, max_frames, temporal, video_codec)
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    info = probe(in_path)
    fps = info["fps"]
    if not fps > 0:
        raise VideoError(f"{in_path}: the container gives no frame rate")
    codec = video_codec or WRITERS.get(os.path.splitext(out_path)[1].lower(), "mp4v")
    cap = cv2.VideoCapture(in_path)
    ok, frame = cap.read()
    if not ok:
        cap.release()
        raise VideoError(f"{in_path}: OpenCV opens it but reads no frame (an unsupported codec, or an empty clip)")
    height, width = frame.shape[:2]
    out_dir, base = os.path.split(out_path)
    partial = os.path.join(out_dir, f".{os.path.splitext(base)[0]}.partial{os.path.splitext(base)[1]}")
    writer = cv2.VideoWriter(partial, cv2.VideoWriter_fourcc(*codec), fps / every_nth, (width, height))
    if not writer.isOpened():
        cap.release()
        raise VideoError(f"{out_path}: OpenCV cannot write {os.path.splitext(out_path)[1]} with codec {codec!r} "
                         "(--video_codec picks another FourCC)")
    known = min(info["frames"], max_frames) if max_frames and info["frames"] else (max_frames or info["frames"])
    progress = Progress(-(-known // every_nth) if known else None, unit="frame", prefix="    ", every=progress_every,
                        stream=stream)
    smooth = TemporalMean(temporal) if temporal > 1 else None
    read = written = 0
    t0 = time.perf_counter()

    def write(frames):
        nonlocal written
        for f in frames:
            writer.write(_to_uint8_bgr(f))
            written += 1
            progress.update(written)

    try:
        while ok and (not max_frames or read < max_frames):
            if read % every_nth == 0:
                if frame.shape[:2] != (height, width):
                    raise VideoError(f"{in_path}: frame {read} is {frame.shape[1]}x{frame.shape[0]}, the first was "
                                     f"{width}x{height}")
                rgb = frame[..., ::-1].astype(np.float32) / np.float32(255.0)
                out = np.asarray(run_frame(rgb), np.float32)
                write(smooth.push(out) if smooth else [out])
            read += 1
            ok, frame = cap.read()
        if smooth:
            write(smooth.flush())
    except BaseException:
        writer.release()
        cap.release()
        progress.close()
        if os.path.exists(partial):
            os.remove(partial)
        raise
    writer.release()
    cap.release()
    progress.close()
    os.replace(partial, out_path)
    seconds = time.perf_counter() - t0
    return {"input": in_path, "output": out_path, "width": width, "height": height, "fps": fps,
            "output_fps": fps / every_nth, "frames_read": read, "frames_written": written, "codec": codec,
            "seconds": seconds, "frames_per_second": written / seconds if seconds > 0 else float("nan")}


def describe(info: dict) -> str:
    rate = f" at {info['output_fps']:.3g} fps" if info["output_fps"] != info["fps"] else f" at {info['fps']:.3g} fps"
    return (f"{info['width']}x{info['height']}, {info['frames_written']} of {info['frames_read']} frames{rate}, "
            f"{info['codec']}, {info['seconds']:.1f} s, {info['frames_per_second']:.2f} frames/s; {AUDIO_NOTE}")


def derain_videos(files: Iterable, output_dir: str, run_frame: RunFrame, *, overwrite: bool = False,
                  video_codec: str | None = None, every_nth: int = 1, max_frames: int = 0, temporal: int = 1,
                  progress_every="30s", fatal: tuple = ()) -> tuple[int, int, list[tuple[str, str]]]:
    """Each clip of ``files`` into ``output_dir`` (as ``photos.derain_photos``: an existing output is
    skipped unless ``overwrite``; a failing clip is reported and the others go on); returns
    ``(written, skipped, failures)``."""
    from erl_derain import photos

    check_settings(every_nth, max_frames, temporal, video_codec)
    os.makedirs(output_dir, exist_ok=True)
    codecs = {}
    jobs = []
    for path in map(os.fspath, files):
        out_path, codecs[path] = output_path(path, output_dir, video_codec)
        jobs.append((path, out_path))

    def run_clip(path: str, out_path: str) -> str:
        print(f"  {path} -> {out_path} (the audio track, if any, is not kept: OpenCV writes pictures only)",
              flush=True)
        return describe(derain_video(path, out_path, run_frame, video_codec=codecs[path], every_nth=every_nth,
                                     max_frames=max_frames, temporal=temporal, progress_every=progress_every))

    # the photo loop: skip existing outputs, one line per clip, a failing clip does not stop the others
    return photos.derain_photos(None, output_dir, run_clip, overwrite=overwrite, fatal=fatal, jobs=jobs)


def local_frame_runner(model, *, tile: int = 512, overlap: int = 32, tile_batch: int = 1) -> RunFrame:
    """``run_frame`` for an ``inference.InferenceModel`` on this machine (``inference.derain_image``:
    tiles beyond ``tile`` pixels a side)."""
    from erl_derain.inference import derain_image

    return lambda rgb: derain_image(model, rgb, tile=tile, overlap=overlap, tile_batch=tile_batch)


def report(written: int, skipped: int, failures: list[tuple[str, str]], output_dir: str) -> int:
    """The summary of the clips of a ``derain`` run (stdout), the failures again (stderr); 1 if any."""
    print(f"De-rained {written} video(s) into {output_dir} ({AUDIO_NOTE}); {skipped} skipped (exist, use "
          f"--overwrite); {len(failures)} failed")
    for p, e in failures:
        print(f"  failed: {p}: {e}", file=sys.stderr)
    return 1 if failures else 0
