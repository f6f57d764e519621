"""The loop over photo files of ``erl-derain derain``, shared by the local path (an
``inference.InferenceModel`` with tiles) and the TF Serving path (``serving.client``); no
TensorFlow at import.

``derain_photos(files, output_dir, run_photo, output_format=..., overwrite=...)``:

1. ``plan``: each input's output path (``output_path``: the input's stem in ``output_dir``, with
   the ``output_format`` extension or, for ``"same"``, the input's own);
2. ``check_plan``: the checks on the whole plan, run before any image is read (the place for
   refusals that concern the set of files: colliding outputs, outputs inside an input folder,
   an output folder that cannot be written);
3. the loop: an existing output is skipped unless ``overwrite``; ``run_photo(in_path, out_path)``
   reads, de-rains and writes one photo and returns a short description, printed as
   ``  <in> (<description>) -> <out>``; an exception is a failure of that photo only (printed as
   ``  FAILED <in>: <message>`` on stderr, the others go on), except the ``fatal`` types, which stop
   the loop (no server: every other photo would fail the same way).

``report`` prints the summary line and the failures and returns the command's exit status.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable

RunPhoto = Callable[[str, str], str]


def output_path(path: str, output_dir: str, output_format: str = "png") -> str:
    """``output_dir/<stem of path>.<output_format>`` (``"same"``: the input's extension)."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(output_dir, stem + (ext if output_format == "same" else "." + output_format.lstrip(".")))


def plan(files: Iterable, output_dir: str, output_format: str = "png") -> list[tuple[str, str]]:
    """``(input, output)`` path pairs, in the order of ``files``."""
    return [(p, output_path(p, output_dir, output_format)) for p in map(os.fspath, files)]


def check_plan(jobs: list[tuple[str, str]], output_dir: str, *, overwrite: bool = False) -> None:
    """Refuse a plan before any image is processed (``ValueError`` naming the files). Nothing is
    refused yet; checks on the set of files go here (they see every input and output at once)."""


def derain_photos(files: Iterable, output_dir: str, run_photo: RunPhoto, *, output_format: str = "png",
                  overwrite: bool = False, fatal: tuple = ()) -> tuple[int, int, list[tuple[str, str]]]:
    """De-rain ``files`` into ``output_dir`` with ``run_photo`` (module docstring); returns
    ``(written, skipped, failures)`` with ``failures`` a list of ``(path, message)``."""
    jobs = plan(files, output_dir, output_format)
    check_plan(jobs, output_dir, overwrite=overwrite)
    os.makedirs(output_dir, exist_ok=True)
    written, skipped, failures = 0, 0, []
    for path, out_path in jobs:
        if os.path.exists(out_path) and not overwrite:
            skipped += 1
            continue
        try:
            description = run_photo(path, out_path)
            written += 1
            print(f"  {path} ({description}) -> {out_path}", flush=True)
        except fatal:
            raise
        except Exception as e:  # one bad file must not stop the others
            failures.append((path, str(e)))
            print(f"  FAILED {path}: {e}", file=sys.stderr, flush=True)
    return written, skipped, failures


def report(written: int, skipped: int, failures: list[tuple[str, str]], output_dir: str,
           via: str | None = None) -> int:
    """The summary of a ``derain`` run (stdout), the failures again (stderr); exit status 1 if any."""
    where = f"{output_dir} via {via}" if via else output_dir
    print(f"De-rained {written} image(s) into {where}; {skipped} skipped (exist, use --overwrite); "
          f"{len(failures)} failed")
    for p, e in failures:
        print(f"  failed: {p}: {e}", file=sys.stderr)
    return 1 if failures else 0


def local_runner(model, *, tile: int = 512, overlap: int = 32, quality: int = 95) -> RunPhoto:
    """``run_photo`` for an ``inference.InferenceModel`` on this machine (``inference.derain_file``:
    tiles beyond ``tile`` pixels a side)."""
    from erl_derain.inference import derain_file

    def run(path: str, out_path: str) -> str:
        info = derain_file(model, path, out_path, tile=tile, overlap=overlap, quality=quality)
        rows, cols = info["tiles"]
        tiles = f", {rows}x{cols} tiles" if rows * cols > 1 else ""
        return (f"{info['width']}x{info['height']} {info['mode']} {info['bit_depth']}-bit{tiles}, "
                f"{info['seconds']:.1f} s")

    return run
