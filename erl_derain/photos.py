"""The loop over photo files of ``erl-derain derain``, shared by the local path (an
``inference.InferenceModel`` with tiles) and the TF Serving path (``serving.client``); no
TensorFlow at import.

``expand_inputs(args, output_dir)`` turns the command's arguments into photo files: a folder gives
its images (not its sub-folders), a file itself; the output folder's own files are never inputs (an
output folder inside an input folder, or the input folder itself, holds earlier outputs); a missing
path or a folder without images is a failure of that argument only (the others go on).

``derain_photos(files, output_dir, run_photo, output_format=..., overwrite=...)``:

1. ``plan``: each input's output path (``output_path``: the input's stem in ``output_dir``, with
   the ``output_format`` extension or, for ``"same"``, the input's own). Inputs whose outputs would
   collide keep what tells them apart: their sub-folders below the folder they share
   (``d1/p.jpg``, ``d2/p.jpg`` -> ``d1/p.png``, ``d2/p.png``), and, for one stem in one folder, their
   extension (``x.jpg``, ``x.png`` -> ``x.jpg.png``, ``x.png.png``). A file given twice is one input.
2. ``check_plan``: the checks on the whole plan, run before any image is read (and, in the command,
   before the model is loaded): the output folder must be writable (``fileio.check_writable_folder``);
   an output path that is an input path is refused, always; outputs that still collide are refused
   with their list. ``PlanError`` (a ``ValueError``) names the files.
3. the loop: an existing output is skipped unless ``overwrite``; ``run_photo(in_path, out_path)``
   reads, de-rains and writes one photo and returns a short description, printed as
   ``  <in> (<description>) -> <out>``; an exception is a failure of that photo only (printed once,
   as ``  FAILED <in>: <message>`` on stderr, the others go on), except the ``fatal`` types, which
   stop the loop (no server: every other photo would fail the same way). Ctrl-C stops the loop
   with :class:`Interrupted` (a ``KeyboardInterrupt``) carrying what was done so far; the photo in
   progress is not written (outputs are written atomically).

``report`` prints the summary line (stdout) and returns the command's exit status: 0 all done, 1
some inputs failed (each listed once, by the loop), 130 interrupted.

Photos and their outputs are files on the local disk (``os`` paths; a file-system URL as
``--output_dir`` is refused by the command's flag checks): only run folders, exports and evaluation
outputs may be URLs (``erl_derain.fileio``).
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from typing import Callable, Iterable

RunPhoto = Callable[[str, str], str]

#: exit status of an interrupted command (128 + SIGINT, as shells report it)
INTERRUPTED = 130


class PlanError(ValueError):
    """A plan refused before any image is processed; the message names the files."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``derain_photos``: ``written``, ``skipped`` and ``failures`` so far."""

    def __init__(self, written: int, skipped: int, failures: list[tuple[str, str]]):
        super().__init__(f"interrupted after {written} photo(s)")
        self.written, self.skipped, self.failures = written, skipped, failures


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def expand_inputs(args: Iterable[str], output_dir: str | None = None
                  ) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """``(files, failures, excluded)``: the photo files of ``args`` (module docstring), the arguments
    that are missing or hold no images as ``(argument, message)``, and the files left out because
    they lie in ``output_dir``."""
    from erl_derain.data.image_io import IMAGE_EXTENSIONS

    files, failures, excluded = [], [], []
    for arg in map(os.fspath, args):
        if os.path.isdir(arg):
            found = sorted(os.path.join(arg, f) for f in os.listdir(arg)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(arg, f)))
            left_out = [f for f in found if output_dir is not None and _inside(f, output_dir)]
            excluded += left_out
            found = [f for f in found if f not in left_out]
            if found:
                files += found
            elif not left_out:
                failures.append((arg, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
        elif os.path.isfile(arg):
            files.append(arg)
        else:
            failures.append((arg, "no such file or folder"))
    return files, failures, excluded


def output_path(path: str, output_dir: str, output_format: str = "png") -> str:
    """``output_dir/<stem of path>.<output_format>`` (``"same"``: the input's extension)."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(output_dir, stem + _extension(ext, output_format))


def _extension(ext: str, output_format: str) -> str:
    return ext if output_format == "same" else "." + output_format.lstrip(".")


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def plan(files: Iterable, output_dir: str, output_format: str = "png") -> list[tuple[str, str]]:
    """``(input, output)`` path pairs, in the order of ``files`` (a file given twice once); colliding
    outputs are told apart by sub-folder and extension (module docstring)."""
    inputs, seen = [], set()
    for p in map(os.fspath, files):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            inputs.append(p)
    outputs = [output_path(p, output_dir, output_format) for p in inputs]
    groups = defaultdict(list)
    for i, out in enumerate(outputs):
        groups[_key(out)].append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        folders = [os.path.dirname(os.path.abspath(inputs[i])) for i in members]
        common = os.path.commonpath(folders)
        stems = defaultdict(list)
        for i, folder in zip(members, folders):
            sub = os.path.relpath(folder, common)
            stem, ext = os.path.splitext(os.path.basename(inputs[i]))
            stems[_key(os.path.join(sub, stem))].append((i, sub, stem, ext))
        for same in stems.values():
            for i, sub, stem, ext in same:
                name = stem + (ext if len(same) > 1 else "") + _extension(ext, output_format)
                outputs[i] = os.path.normpath(os.path.join(output_dir, sub, name))
    return list(zip(inputs, outputs))


def check_plan(jobs: list[tuple[str, str]], output_dir: str, *, overwrite: bool = False) -> None:
    """Refuse a plan before any image is processed (``PlanError`` naming the files): an output
    folder that cannot be written, an output that is an input, outputs that still collide."""
    from erl_derain.fileio import check_writable_folder

    try:
        check_writable_folder(output_dir)
    except ValueError as e:
        raise PlanError(f"--output_dir={output_dir}: {e}") from None
    inputs = {os.path.realpath(p): p for p, _ in jobs}
    same = [(p, out) for p, out in jobs if os.path.realpath(out) in inputs]
    if same:
        listed = "\n".join(f"  {inputs[os.path.realpath(out)]} (the output of {p})" for p, out in same[:20])
        raise PlanError(f"{len(same)} output(s) would replace an input photo (choose another --output_dir; "
                        f"--overwrite never replaces inputs):\n{listed}")
    by_output = defaultdict(list)
    for p, out in jobs:
        by_output[_key(out)].append((p, out))
    clashes = [group for group in by_output.values() if len(group) > 1]
    if clashes:
        listed = "\n".join(f"  {group[0][1]} <- {', '.join(p for p, _ in group)}" for group in clashes[:20])
        raise PlanError(f"{len(clashes)} output name(s) would be written by several inputs (rename them):\n{listed}")


def pending(jobs: list[tuple[str, str]], overwrite: bool = False) -> list[tuple[str, str]]:
    """The jobs the loop would run (the others are skipped: their outputs exist)."""
    return [(p, out) for p, out in jobs if overwrite or not os.path.exists(out)]


def derain_photos(files: Iterable, output_dir: str, run_photo: RunPhoto, *, output_format: str = "png",
                  overwrite: bool = False, fatal: tuple = (),
                  jobs: list[tuple[str, str]] | None = None) -> tuple[int, int, list[tuple[str, str]]]:
    """De-rain ``files`` into ``output_dir`` with ``run_photo`` (module docstring); returns
    ``(written, skipped, failures)`` with ``failures`` a list of ``(path, message)``. ``jobs``: a
    plan already made and checked (``plan`` + ``check_plan``; then ``files`` is not used)."""
    if jobs is None:
        jobs = plan(files, output_dir, output_format)
        check_plan(jobs, output_dir, overwrite=overwrite)
    written, skipped, failures = 0, 0, []
    try:
        for path, out_path in jobs:
            if os.path.exists(out_path) and not overwrite:
                skipped += 1
                continue
            try:
                os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
                description = run_photo(path, out_path)
                written += 1
                print(f"  {path} ({description}) -> {out_path}", flush=True)
            except fatal:
                raise
            except Exception as e:  # one bad file must not stop the others
                failures.append((path, str(e)))
                print_failure(path, str(e))
    except KeyboardInterrupt:
        raise Interrupted(written, skipped, failures) from None
    return written, skipped, failures


def print_failure(path: str, message: str) -> None:
    """The one line a failed input gets (stderr)."""
    print(f"  FAILED {path}: {message}", file=sys.stderr, flush=True)


def report(written: int, skipped: int, failures: list[tuple[str, str]], output_dir: str,
           via: str | None = None, interrupted: bool = False) -> int:
    """The summary of a ``derain`` run (stdout); the failures were listed once as they happened.
    Returns the exit status: 130 interrupted, 1 if any input failed, else 0."""
    where = f"{output_dir} via {via}" if via else output_dir
    failed = f"{len(failures)} failed" + (" (listed above)" if failures else "")
    print(f"{'Interrupted: ' if interrupted else ''}De-rained {written} image(s) into {where}; {skipped} skipped "
          f"(exist, use --overwrite); {failed}", flush=True)
    if interrupted:
        return INTERRUPTED
    return 1 if failures else 0


def local_runner(model, *, tile: int = 512, overlap: int = 32, quality: int = 95, tile_batch: int = 1) -> RunPhoto:
    """``run_photo`` for an ``inference.InferenceModel`` on this machine (``inference.derain_file``:
    tiles beyond ``tile`` pixels a side)."""
    from erl_derain.inference import derain_file

    def run(path: str, out_path: str) -> str:
        info = derain_file(model, path, out_path, tile=tile, overlap=overlap, quality=quality, tile_batch=tile_batch)
        rows, cols = info["tiles"]
        tiles = f", {rows}x{cols} tiles" if rows * cols > 1 else ""
        return (f"{info['width']}x{info['height']} {info['mode']} {info['bit_depth']}-bit{tiles}, "
                f"{info['seconds']:.1f} s")

    return run
