"""The files of a run (``--model_dir``, exports, evaluation outputs) on any file system TensorFlow
knows, and atomic writes.

A path is *local* (a path on this machine's disk) or a *file-system URL* (``<scheme>://...``:
``gs://`` is built into TensorFlow; ``hdfs://``, ``s3://``, ``az://`` are registered by the
tensorflow-io package; ``ram://`` is TensorFlow's in-memory file system of this process, which the
tests use). Local paths go through ``os`` exactly as before; URLs go through ``tf.io.gfile``
(TensorFlow is imported only when a URL is given, so a local caller of this module needs neither
TensorFlow nor NumPy). The helpers do the same on both and raise ``OSError`` (``FileNotFoundError``,
``PermissionError``, ...) naming the path, also for TensorFlow's errors:

* ``is_remote``, ``abspath``, ``dirname``: path arithmetic (a URL is never made relative to the
  current folder);
* ``exists``, ``isdir``, ``isfile``, ``listdir``, ``makedirs``, ``remove``, ``rmtree``,
  ``read_text`` / ``read_bytes``, ``copy_file``;
* ``move(src, dst)``: a file or a folder to a name that does not exist yet;
* ``upload_tree(local_folder, dst, last=...)``: a folder built on the local disk copied to ``dst``,
  the files named in ``last`` after all the others (exports: ``saved_model.pb`` last).

Atomic writes: a file is written to a temporary name in its own folder (``.<name>.<random>.tmp``,
unique per process and thread) and moved over the final name, so a reader sees either the old file
or the new one, never a truncated one, and an interrupted run leaves at most a hidden temporary file
(removed when the write itself fails). Locally the temporary file is created with ``open(..., "x")``,
which honours the umask (``tempfile.mkstemp`` would make it 0600), flushed to disk (``fsync``) and
moved with ``os.replace``; on a URL the content is written with one ``tf.io.gfile.GFile`` and moved
with ``tf.io.gfile.rename(tmp, path, overwrite=True)``.

* ``atomic_write_text(path, text)`` / ``atomic_write_bytes(path, data)``: the whole content at once;
* ``atomic_open(path, "wb" | "w")``: a context manager for writers that want a file object
  (``np.savez``, ``fig.savefig``); the file is moved into place when the block ends without an
  exception and discarded otherwise (on a URL the block writes to memory; the file is written when
  it ends).

What "atomic" means on which file system (per TensorFlow's sources of its file systems):

* local POSIX disk: ``os.replace`` is one atomic rename; after ``fsync`` the new content survives a
  crash of the machine. Folders are moved with one ``os.rename`` too (set-aside runs, exports).
* ``gs://``: an object appears whole when its upload ends (GFile uploads on close), and TensorFlow
  renames an object by a server-side copy to the new name followed by a delete of the old one: a
  reader of ``path`` sees the old object until the copy is complete, then the new one, never a
  partial object; the temporary object exists until the delete. A folder is renamed object by
  object (it is only a name prefix), so moving a folder (``move``) is not atomic: readers may see
  part of it under each name.
* ``hdfs://``: TensorFlow's HDFS rename with overwrite deletes the target, then renames (one atomic
  HDFS rename): a reader never sees a partial file, but for a moment sees no file at all.
* ``ram://``: in this process only (gone when it exits; no other process sees it), each operation
  under one lock. Its rename moves exactly one name: a folder moved with ``tf.io.gfile.rename``
  would leave its files behind, which is why ``move`` and ``upload_tree`` move and copy files one
  by one on every URL, and why files in a folder that was never made (``makedirs``) are not listed.

``check_writable_folder(path)`` says up front (before hours of work) why an output folder could not
be written: a file in its place or on its way, a folder without write permission, or one that
refuses a probe file (a read-only mount, which ``os.access`` does not see for root; on a URL: an
unknown scheme, a missing bucket, no permission, no network).

Photos and videos given to ``erl-derain derain`` and the folders of ``--dataset=folder:`` /
``--clean_dir`` are read from the local disk only (``os`` and Pillow / OpenCV), not through these
helpers.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import re
import uuid
from typing import IO, Iterable, Iterator

__all__ = ["abspath", "atomic_open", "atomic_write_bytes", "atomic_write_text", "check_writable_folder", "copy_file",
           "dirname", "exists", "is_remote", "isdir", "isfile", "listdir", "makedirs", "move", "read_bytes",
           "read_text", "remove", "rmtree", "upload_tree"]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote(path) -> bool:
    """Whether ``path`` is a file-system URL (``gs://...``, ``ram://...``), read and written through
    ``tf.io.gfile``, rather than a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


def _split(path: str) -> tuple[str, str]:
    """``("<scheme>://", rest)`` of a URL."""
    m = _URL.match(path)
    return m.group(0), path[m.end():]


def abspath(path) -> str:
    """A local path made absolute (``os.path.abspath``); a URL as it is, without ``.``, ``..``,
    doubled or trailing slashes."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.abspath(path)
    prefix, rest = _split(path)
    if not rest.strip("/"):
        return prefix + rest[:1]  # "ram://", "file:///"
    lead = "/" if rest.startswith("/") else ""
    return prefix + lead + posixpath.normpath(rest).lstrip("/")


def dirname(path) -> str:
    """The folder holding ``path`` (``os.path.dirname`` of the absolute path); on a URL the parent
    below the scheme (``gs://b/run`` -> ``gs://b``; the scheme's root is its own parent)."""
    path = abspath(path)
    if not is_remote(path):
        return os.path.dirname(path)
    prefix, rest = _split(path)
    parent = posixpath.dirname(rest)
    return prefix + (parent if parent not in ("", "/") or rest.startswith("/") else "")


def _gfile():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (URLs only)

    return tf.io.gfile


def _os_error(e: Exception, path: str) -> OSError:
    """A TensorFlow error about ``path`` as the ``OSError`` an ``os`` function would raise."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    message = getattr(e, "message", "") or str(e)
    if isinstance(e, tf.errors.NotFoundError):
        return FileNotFoundError(errno.ENOENT, message or "not found", path)
    if isinstance(e, tf.errors.AlreadyExistsError):
        return FileExistsError(errno.EEXIST, message or "already exists", path)
    if isinstance(e, tf.errors.PermissionDeniedError):
        return PermissionError(errno.EACCES, message or "permission denied", path)
    if isinstance(e, tf.errors.UnimplementedError) and "scheme" in message:
        scheme = _split(path)[0] if is_remote(path) else ""
        return OSError(errno.EPROTONOSUPPORT, f"TensorFlow has no file system for {scheme} ({message}; gs:// is "
                       "built in, the tensorflow-io package adds hdfs://, s3://, az://)", path)
    return OSError(errno.EIO, message or type(e).__name__, path)


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        yield
    except tf.errors.OpError as e:
        raise _os_error(e, path) from e


def _ask(path, local, remote: str):
    """``local(path)`` for a local path, else ``tf.io.gfile.<remote>(path)`` with TF errors as OSError."""
    path = os.fspath(path)
    if not is_remote(path):
        return local(path)
    with _errors(path):
        return getattr(_gfile(), remote)(path)


def exists(path) -> bool:
    return _ask(path, os.path.exists, "exists")


def isdir(path) -> bool:
    return _ask(path, os.path.isdir, "isdir")


def isfile(path) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isfile(path)
    return exists(path) and not isdir(path)


def listdir(path) -> list[str]:
    """The names in the folder ``path`` (a URL's sub-folders without the trailing slash GCS gives)."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.listdir(path)
    with _errors(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]


def makedirs(path) -> None:
    """``path`` and its parents (nothing happens when the folder exists)."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    with _errors(path):
        _gfile().makedirs(path)


def remove(path) -> None:
    path = os.fspath(path)
    if not is_remote(path):
        os.unlink(path)
        return
    with _errors(path):
        _gfile().remove(path)


def rmtree(path, ignore_errors: bool = False) -> None:
    """Remove the folder ``path`` and everything in it (``shutil.rmtree``)."""
    path = os.fspath(path)
    if not is_remote(path):
        import shutil  # pylint: disable=import-outside-toplevel

        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        with _errors(path):
            _gfile().rmtree(path)
    except OSError:
        if not ignore_errors:
            raise


def read_bytes(path) -> bytes:
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with _errors(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()


def read_text(path, encoding: str = "utf-8") -> str:
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, encoding=encoding) as f:
            return f.read()
    return read_bytes(path).decode(encoding)


def copy_file(src, dst) -> None:
    """Copy the file ``src`` to ``dst`` (replaced if it exists; either may be local or a URL)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not (is_remote(src) or is_remote(dst)):
        import shutil  # pylint: disable=import-outside-toplevel

        shutil.copyfile(src, dst)
        return
    with _errors(dst if is_remote(dst) else src):
        _gfile().copy(src, dst, overwrite=True)


def move(src, dst) -> None:
    """Move the file or folder ``src`` to ``dst``, which must not exist. Local: one ``os.rename``
    (atomic). A URL: a file with ``tf.io.gfile.rename``; a folder file by file (the module
    docstring: not atomic), its files renamed into the new folder and the old one removed."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src):
        os.rename(src, dst)
        return
    gfile = _gfile()
    if exists(dst):
        raise FileExistsError(errno.EEXIST, "already exists", dst)
    if not isdir(src):
        with _errors(src):
            gfile.rename(src, dst, overwrite=False)
        return
    with _errors(src):
        for folder, _, files in gfile.walk(src):
            target = dst + folder[len(src):]
            gfile.makedirs(target)
            for name in files:
                gfile.rename(posixpath.join(folder, name), posixpath.join(target, name), overwrite=False)
        gfile.rmtree(src)


def upload_tree(src: str, dst, last: Iterable[str] = ()) -> None:
    """Copy the local folder ``src`` (files and sub-folders) to ``dst`` (local or a URL), creating
    the folders; the files whose path relative to ``src`` is in ``last`` are copied after all the
    others (e.g. ``saved_model.pb``: a reader that opens it finds everything else in place)."""
    dst = os.fspath(dst)
    last = [os.path.normpath(p) for p in last]
    pending = []
    for folder, _, files in os.walk(src):
        rel = os.path.relpath(folder, src)
        target = dst if rel == "." else posixpath.join(dst, *rel.split(os.sep))
        makedirs(target)
        for name in sorted(files):
            pending.append((os.path.normpath(os.path.join(rel, name)), os.path.join(folder, name),
                            posixpath.join(target, name)))
    pending.sort(key=lambda item: (item[0] in last, last.index(item[0]) if item[0] in last else 0))
    for _, local, remote in pending:
        copy_file(local, remote)


def _temporary_name(path: str) -> str:
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
    if is_remote(path):
        path = abspath(path)
        return posixpath.join(dirname(path), f".{posixpath.basename(path)}.{name}")
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{name}")


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", *, encoding: str | None = "utf-8", make_parents: bool = False,
                fsync: bool = True) -> Iterator[IO]:
    """``with atomic_open(path, "w") as f: ...``: ``f`` is a temporary file next to ``path`` that
    replaces ``path`` when the block ends normally (after ``fsync`` unless ``fsync=False``); on an
    exception it is removed and ``path`` is left as it was. ``mode``: ``"w"`` (text, ``encoding``)
    or ``"wb"``. ``make_parents``: create the folder first. On a URL ``f`` is an in-memory buffer
    whose content is written to the temporary file and renamed over ``path`` when the block ends
    (module docstring)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    if not path:
        raise ValueError("the output path is empty")
    text = mode == "w"
    if is_remote(path):
        if make_parents:
            makedirs(dirname(path))
        buffer = io.StringIO(newline="") if text else io.BytesIO()
        yield buffer
        data = buffer.getvalue()
        _write_remote(path, data.encode(encoding or "utf-8") if text else data)
        return
    if make_parents:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temporary_name(path)
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


def _write_remote(path: str, data: bytes) -> None:
    """``data`` to a temporary file next to ``path``, then renamed over it; the temporary file is
    removed when either step fails."""
    gfile = _gfile()
    tmp = _temporary_name(path)
    try:
        with _errors(path):
            with gfile.GFile(tmp, "wb") as f:
                f.write(data)
            gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            gfile.remove(tmp)
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
    catches read-only mounts also for root). On a URL: the file system is unknown or unreachable,
    or the probe file cannot be written. Creates nothing that stays."""
    if is_remote(path):
        _check_writable_url(abspath(path))
        return
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


def _check_writable_url(path: str) -> None:
    """``check_writable_folder`` of a URL: the nearest existing folder (or, when none exists, the
    first folder below the scheme, e.g. the bucket) takes a probe file, which is removed again."""
    try:
        existing = path
        while not exists(existing):
            parent = dirname(existing)
            if parent in (existing, _split(parent)[0]):  # the bucket (first folder): the probe says why
                break
            existing = parent
        if exists(existing) and not isdir(existing):
            if existing == path:
                raise ValueError(f"{path} is a file, not a folder")
            raise ValueError(f"{existing} is a file, so the folder {path} cannot be created")
    except OSError as e:
        raise ValueError(f"{path} cannot be reached: {e.strerror or e}") from None
    what = "" if existing == path else f" (the folder {path} would be created in it)"
    probe = posixpath.join(existing, f".erl_derain_probe.{os.getpid()}-{uuid.uuid4().hex[:12]}")
    gfile = _gfile()
    try:
        with _errors(probe):
            with gfile.GFile(probe, "wb") as f:
                f.write(b"")
    except OSError as e:
        raise ValueError(f"{existing} is not writable{what}: {e.strerror or e}") from None
    with contextlib.suppress(Exception):
        gfile.remove(probe)
