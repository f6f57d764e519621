"""Video de-raining: frames per second of the bundled model, and what --temporal does to flicker.

    python benchmarks/video.py [--size=640x360] [--frames=24] [--fps=24] [--pan=2] [--temporal=1,3,5,7]
        [--model_dir=RUN] [--tile=512] [--speed_only]

1. Builds two synthetic rainy clips from a clean photo (Kodak's kodim05 of the shared clean_photos,
   or a synthetic picture without it) at ``--size``: ``static`` (the scene still) and ``pan`` (the
   scene sliding ``--pan`` pixels per frame), with new rain streaks in every frame
   (``rain_synthesis.synthesize_rain``, one seed per frame), written losslessly (FFV1 .mkv), and the
   clean frames kept.
2. Speed: ``video.derain_video`` as ``erl-derain derain clip.mp4`` runs it (the bundled model, or
   ``--model_dir``; ``--tile``; MPEG-4 ``mp4v`` output): frames written per second of wall time,
   after a warm-up clip (tracing), on the static clip.
3. Flicker, for each ``--temporal``: the same loop writing lossless FFV1, frames read back; flicker =
   the mean absolute difference of the Y channel (0..255) between consecutive frames, for the rainy
   input, the output and the clean frames (static: the clean scene has none, so all of it is rain or
   network flicker), and Y-PSNR of the output against the clean frames (what smoothing costs where
   things move). The network runs once per frame; the temporal variants reuse its outputs through
   the same loop (the smoothing acts on the network's outputs).

Measured on the 2-core development machine (no GPU), TF 2.21, the bundled model, 640x360, 24 frames,
clips 24 dB Y-PSNR (as the shared sirr_val20 pairs), pan 2 px/frame:

* speed: 0.59 frames/s (1.70 s/frame; two tiles of 336x360 with the default --tile=512; whole frames,
  --tile=0: 0.57 frames/s), the machine shared with other jobs (load average 3.4 on its 2 CPUs);
  0.34 frames/s at load 8.5, 0.23 at load 10.
* flicker (mean |Y_t - Y_t-1|, grey levels) and Y-PSNR against the clean frames:

  | clip | --temporal | flicker input | flicker output | flicker clean | Y-PSNR input / output (dB) |
  |---|---|---|---|---|---|
  | static | 1 | 8.99 | 5.65 | 0.00 | 24.04 / 27.86 |
  | static | 3 | 8.99 | 1.88 | 0.00 | 24.04 / 29.75 |
  | static | 5 | 8.99 | 1.15 | 0.00 | 24.04 / 30.35 |
  | static | 7 | 8.99 | 0.82 | 0.00 | 24.04 / 30.65 |
  | pan | 1 | 22.11 | 15.99 | 15.60 | 24.06 / 27.69 |
  | pan | 3 | 22.11 | 8.21 | 15.60 | 24.06 / 24.30 |
  | pan | 5 | 22.11 | 5.76 | 15.60 | 24.06 / 22.62 |
  | pan | 7 | 22.11 | 4.45 | 15.60 | 24.06 / 21.56 |

  The network alone removes 37 % of the rain's flicker on a still scene (8.99 -> 5.65); --temporal=3
  leaves a third of that (1.88) and gains 1.9 dB, 5 frames 2.5 dB. Where the picture moves, the mean
  smears it (the output flickers less than the clean frames themselves) and costs 3.4 dB at 3 frames:
  --temporal is for a still camera, and stays off by default.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import shared_data_dir  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def _photo(h: int, w: int, pan: int, frames: int) -> np.ndarray:
    import cv2

    path = shared_data_dir() / "clean_photos" / "kodak24" / "kodim05.png"
    need_w = w + pan * frames
    if path.exists():
        img = cv2.imread(str(path))[..., ::-1].astype(np.float32) / 255.0
        scale = max(h / img.shape[0], need_w / img.shape[1])
        img = cv2.resize(img, (int(np.ceil(img.shape[1] * scale)), int(np.ceil(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
        return np.clip(img[:h], 0, 1)
    yy, xx = np.mgrid[0:h, 0:need_w].astype(np.float32)
    return np.stack([0.5 + 0.3 * np.sin(xx / 37), 0.45 + 0.3 * np.cos(yy / 23), 0.5 + 0.2 * np.sin((xx + yy) / 51)], -1)


def make_clip(path: str, h: int, w: int, frames: int, fps: float, pan: int) -> list[np.ndarray]:
    """Write the rainy clip (lossless) and return its clean frames (uint8 RGB)."""
    import cv2

    from erl_derain.data.rain_synthesis import synthesize_rain

    photo = _photo(h, w, pan, frames)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    clean_frames = []
    for t in range(frames):
        clean = photo[:, t * pan:t * pan + w]
        # about 22 dB Y-PSNR, as the shared sirr_val20 pairs; streaks drawn anew in every frame
        rainy, _ = synthesize_rain(clean, density=0.003, length=20.0, intensity=0.35, seed=1000 + t)
        writer.write(np.floor(np.clip(rainy, 0, 1)[..., ::-1] * 255 + 0.5).astype(np.uint8))
        clean_frames.append(np.floor(np.clip(clean, 0, 1) * 255 + 0.5).astype(np.uint8))
    writer.release()
    return clean_frames


def read_frames(path: str) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(path)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f[..., ::-1].copy())
    cap.release()
    return out


def flicker(frames: list[np.ndarray]) -> float:
    from erl_derain import metrics

    ys = [metrics.rgb_to_y(f) for f in frames]
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(ys[1:], ys[:-1])]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--pan", type=int, default=2)
    parser.add_argument("--temporal", default="1,3,5,7")
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--speed_only", action="store_true", help="measure frames/s only (no flicker table)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from erl_derain import metrics, video
    from erl_derain.inference import InferenceModel

    if args.model_dir:
        from erl_derain.training import load_trainer

        trainer, _ = load_trainer(args.model_dir)
        what = args.model_dir
    else:
        from erl_derain.pretrained import load_pretrained_trainer

        trainer, _ = load_pretrained_trainer()
        what = "the bundled model"
    model = trainer.inference_model()
    compiled = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    model = InferenceModel(compiled, model.pad_multiple)  # as the CLI's derain (cli._predict_fn)
    run = video.local_frame_runner(model, tile=args.tile, overlap=32)
    h, w = _size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        clips = {}
        for name, pan in (("static", 0),) + ((("pan", args.pan),) if not args.speed_only else ()):
            path = os.path.join(tmp, f"{name}.mkv")
            clips[name] = (path, make_clip(path, h, w, args.frames, args.fps, pan))
        # -- speed: the CLI's path (mp4v output), after a warm-up on a few frames
        video.derain_video(clips["static"][0], os.path.join(tmp, "warm.mp4"), run, max_frames=2, stream=open(os.devnull, "w"))
        info = video.derain_video(clips["static"][0], os.path.join(tmp, "speed.mp4"), run, stream=open(os.devnull, "w"))
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"{what}, {w}x{h}, tile {args.tile}: {info['frames_written']} frames in {info['seconds']:.1f} s = "
              f"{info['frames_per_second']:.2f} frames/s ({info['seconds'] / info['frames_written']:.2f} s/frame); "
              f"load average {load} on {os.cpu_count()} CPUs")
        if args.speed_only:
            return
        # -- flicker: the network once per frame, the temporal variants through the loop on its outputs
        print()
        print("| clip | --temporal | flicker input | flicker output | flicker clean | Y-PSNR input / output vs clean (dB) |")
        print("|---|---|---|---|---|---|")
        for name, (path, clean) in clips.items():
            rainy = read_frames(path)
            outputs = [run(f.astype(np.float32) / 255.0) for f in rainy]
            cache = iter(outputs)
            replay = lambda _rgb: next(cache)  # noqa: E731  (the same outputs, in frame order)
            for n in (int(v) for v in args.temporal.split(",")):
                cache = iter(outputs)
                out_path = os.path.join(tmp, f"{name}_t{n}.mkv")
                video.derain_video(path, out_path, replay, video_codec="FFV1", temporal=n,
                                   stream=open(os.devnull, "w"))
                out = read_frames(out_path)
                assert len(out) == len(clean), (len(out), len(clean))
                psnr = np.mean([metrics.psnr_y(o, c) for o, c in zip(out, clean)])
                psnr_in = np.mean([metrics.psnr_y(r, c) for r, c in zip(rainy, clean)])
                print(f"| {name} | {n} | {flicker(rainy):.2f} | {flicker(out):.2f} | {flicker(clean):.2f} | "
                      f"{psnr_in:.2f} / {psnr:.2f} |")


if __name__ == "__main__":
    main()
