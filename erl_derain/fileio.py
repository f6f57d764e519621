"""Atomic file writes (standard library only: no TensorFlow, no NumPy).

A file is written to a temporary name in its own folder (``.<name>.<random>.tmp``, unique per
process and thread), flushed to disk and moved over the final name with ``os.replace``, so a reader
sees either the old file or the new one, never a truncated one, and an interrupted run leaves at
most a hidden temporary file (removed when the write itself fails). The temporary file is created
with ``open(..., "x")``, which honours the umask (``tempfile.mkstemp`` would make it 0600).

* ``atomic_write_text(path, text)`` / ``atomic_write_bytes(path, data)``: the whole content at once;
* ``atomic_open(path, "wb" | "w")``: a context manager for writers that want a file object
  (``np.savez``, ``fig.savefig``); the file is moved into place when the block ends without an
  exception and discarded otherwise.

``check_writable_folder(path)`` says up front (before hours of work) why an output folder could not
be written: a file in its place or on its way, a folder without write permission, or one that
refuses a probe file (a read-only mount, which ``os.access`` does not see for root).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import IO, Iterator

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "check_writable_folder"]


def _temporary_name(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", *, encoding: str | None = "utf-8", make_parents: bool = False,
                fsync: bool = True) -> Iterator[IO]:
    """``with atomic_open(path, "w") as f: ...``: ``f`` is a temporary file next to ``path`` that
    replaces ``path`` when the block ends normally (after ``fsync`` unless ``fsync=False``); on an
    exception it is removed and ``path`` is left as it was. ``mode``: ``"w"`` (text, ``encoding``)
    or ``"wb"``. ``make_parents``: create the folder first."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    if not path:
        raise ValueError("the output path is empty")
    if make_parents:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temporary_name(path)
    text = mode == "w"
    try:
        with open(tmp, "x" if text else "xb", **({"encoding": encoding} if text else {})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes, *, make_parents: bool = False, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (module docstring)."""
    with atomic_open(path, "wb", make_parents=make_parents, fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path, text: str, *, encoding: str = "utf-8", make_parents: bool = False,
                      fsync: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (module docstring); UTF-8 unless ``encoding``."""
    with atomic_open(path, "w", encoding=encoding, make_parents=make_parents, fsync=fsync) as f:
        f.write(text)


def check_writable_folder(path) -> None:
    """Raise ``ValueError`` saying why ``path`` cannot be used as an output folder (created when
    missing, files written in it): ``path`` or one of its parents is a file; the nearest existing
    folder is not writable (``os.access``) or refuses a probe file (created and removed again;
    catches read-only mounts also for root). Creates nothing that stays."""
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        if existing == path:
            raise ValueError(f"{path} is a file, not a folder")
        raise ValueError(f"{existing} is a file, so the folder {path} cannot be created")
    what = "" if existing == path else f" (the folder {path} would be created in it)"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing} is not writable{what}")
    probe = os.path.join(existing, f".erl_derain_probe.{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as e:
        raise ValueError(f"{existing} is not writable{what}: {e.strerror or e}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
