"""TF Serving's configuration files next to the exports (standard library only: no TensorFlow).

In the server's model root (``erl-derain export --serving_root``, a folder holding every
``export_base``; by default the parent folder of ``export_base``), and nowhere else:

* ``models.config`` (``--model_config_file``, a ``ModelServerConfig`` text proto): one ``config``
  block per model, ``base_path`` = the absolute export_base, serving the version just exported
  (``model_version_policy { specific { versions: N } }``);
* ``models.docker.config``: the same for the container, ``base_path`` = ``/models/<folder>``;
* ``batching_parameters.txt`` (``--batching_parameters_file``): written once, yours to tune;
* ``.models.config.lock``: the (empty) lock file of the exclusive lock below.

Each export adds or replaces its own model's block in both config files and keeps the other
models' blocks verbatim (parsed with comments and quoted strings skipped), under an exclusive lock,
so two exports of different models into one folder cannot lose each other's entries; the files
are replaced atomically (``erl_derain.fileio``).

A model root on a file-system URL (``gs://bucket/models``; TF Serving reads its config and models
there itself) has the same files, with two differences: there is no lock (object stores have no
``flock``: two exports into one remote root at the same moment may lose one model's entry; export
one at a time), and ``models.docker.config`` lists the same URLs as ``models.config`` (a container
reads them directly; nothing is mounted).
"""

from __future__ import annotations

import os
import re
import sys

from erl_derain import fileio
from erl_derain.fileio import atomic_write_text
from erl_derain.serving.layout import BATCHING_PARAMETERS, DOCKER_MODELS_CONFIG, DOCKER_MODELS_ROOT, MODELS_CONFIG


def _text_proto_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_CONFIG_HEADER = (
    "# TF Serving --model_config_file (ModelServerConfig text proto) for the models in this folder,\n"
    "# maintained by `erl-derain export`: each export (re)writes its model's config block, serving the\n"
    "# version just exported, and keeps the other blocks as they are. To follow the newest version\n"
    "# automatically, use  model_version_policy { latest { num_versions: 1 } }  in a block instead.\n")


def model_config_block(model_name: str, base_path: str, version: int) -> str:
    """One ``config { ... }`` entry of a ``ModelServerConfig``'s ``model_config_list``."""
    return ("  config {\n"
            f"    name: {_text_proto_string(model_name)}\n"
            f"    base_path: {_text_proto_string(base_path)}\n"
            '    model_platform: "tensorflow"\n'
            "    model_version_policy {\n"
            "      specific {\n"
            f"        versions: {int(version)}\n"
            "      }\n"
            "    }\n"
            "  }\n")


def models_config_text(blocks) -> str:
    """A ``--model_config_file`` holding ``blocks`` (``model_config_block`` texts)."""
    return _CONFIG_HEADER + "model_config_list {\n" + "".join(blocks) + "}\n"


def config_blocks(text: str) -> list[tuple[str, str]]:
    """``(name, raw text)`` of each ``config { ... }`` block inside ``model_config_list`` (comments
    and quoted strings skipped when matching braces); ``ValueError`` if the text is not such a file."""
    outer = re.search(r"\bmodel_config_list\s*:?\s*\{", text)
    if outer is None:
        raise ValueError("no model_config_list { ... }")
    blocks, start, depth, i, n = [], None, 1, outer.end(), len(text)
    while i < n and depth > 0:
        ch = text[i]
        if ch == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if ch == "{":
            if depth == 1:
                m = re.search(r"\bconfig\s*:?\s*$", text[max(0, i - 40):i])
                if m is None:
                    raise ValueError(f"unexpected block at offset {i}")
                start = max(0, i - 40) + m.start()
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 1 and start is not None:
                raw = text[start:i + 1]
                name = re.search(r'\bname\s*:\s*"((?:[^"\\]|\\.)*)"', raw)
                name = re.sub(r"\\(.)", r"\1", name.group(1)) if name else ""  # unescape \" and \\
                blocks.append((name, "  " + raw.strip() + "\n"))
                start = None
        i += 1
    if depth != 0:
        raise ValueError("unbalanced braces")
    return blocks



def update_models_config(path: str, model_name: str, base_path: str, version: int) -> None:
    """Add or replace ``model_name``'s block in the ``--model_config_file`` at ``path``, keeping the
    other models' blocks verbatim (an unreadable file is kept as ``<path>.bak`` and replaced)."""
    blocks = []
    if fileio.exists(path):
        text = fileio.read_text(path)
        try:
            blocks = [(name, raw) for name, raw in config_blocks(text) if name != model_name]
        except ValueError as e:
            print(f"warning: {path} is not a model_config_list file ({e}): kept as {path}.bak and replaced",
                  file=sys.stderr)
            fileio.copy_file(path, path + ".bak")
            blocks = []
    blocks.append((model_name, model_config_block(model_name, base_path, version)))
    blocks.sort(key=lambda b: b[0])
    atomic_write_text(path, models_config_text(raw for _, raw in blocks))


def batching_parameters_text(max_batch_size: int = 4, batch_timeout_micros: int = 5000, num_batch_threads: int = 2,
                             max_enqueued_batches: int = 16) -> str:
    """TF Serving's ``--batching_parameters_file`` (a ``BatchingParameters`` text proto)."""
    return (
        "# TF Serving --batching_parameters_file (BatchingParameters text proto), used with --enable_batching.\n"
        "# De-raining is compute bound: one 512x512 image takes ~0.1-1 s and every CPU core, so batches stay\n"
        "# small (images of a batch are held in memory together), the timeout is short next to an\n"
        "# inference, and the queue is bounded so that an overloaded server answers UNAVAILABLE instead of\n"
        "# piling up requests. num_batch_threads = batches run in parallel: 1 per GPU; on CPU 1-2 (each\n"
        "# run already uses all cores). Batched float requests must share one image size; derain_image's\n"
        "# encoded images may differ.\n"
        f"max_batch_size {{ value: {int(max_batch_size)} }}\n"
        f"batch_timeout_micros {{ value: {int(batch_timeout_micros)} }}\n"
        f"num_batch_threads {{ value: {int(num_batch_threads)} }}\n"
        f"max_enqueued_batches {{ value: {int(max_enqueued_batches)} }}\n")


def serving_root(export_base: str, root: str | None = None) -> tuple[str, str]:
    """``(root, export_base)`` as absolute paths: ``root`` (default: export_base's parent folder) must
    hold ``export_base`` (the Docker command mounts the root only); ``ValueError`` otherwise."""
    export_base = fileio.abspath(export_base)
    root = fileio.dirname(export_base) if root is None else fileio.abspath(root)
    if fileio.is_remote(root) or fileio.is_remote(export_base):
        inside = export_base.startswith(root.rstrip("/") + "/")
    else:
        inside = os.path.commonpath([root, export_base]) == root
    if not inside or root == export_base:
        raise ValueError(f"--export_base={export_base} is not inside --serving_root={root}: the server's model root "
                         "must hold the exports (e.g. --export_base=<serving_root>/<model name>)")
    return root, export_base


def _docker_base_path(root: str, export_base: str) -> str:
    if fileio.is_remote(root):  # read by the container itself (module docstring)
        return export_base
    return DOCKER_MODELS_ROOT + "/" + os.path.relpath(export_base, root).replace(os.sep, "/")


def server_command_lines(export_base: str, root: str | None = None) -> dict:
    """The ``tensorflow_model_server`` and ``docker run`` command lines serving the models of the
    model root ``root`` (default: export_base's parent folder), which the Docker command mounts."""
    root, _ = serving_root(export_base, root)
    timeout = "--rest_api_timeout_in_ms=300000"
    if fileio.is_remote(root):  # nothing to mount: the server reads the root itself
        return {
            "tensorflow_model_server": (f"tensorflow_model_server --rest_api_port=8501 --port=8500 "
                                        f"--model_config_file={root}/{MODELS_CONFIG} {timeout}"),
            "docker": (f"docker run --rm -p 8501:8501 -p 8500:8500 tensorflow/serving "
                       f"--model_config_file={root}/{DOCKER_MODELS_CONFIG} {timeout}"),
            "batching": f"--enable_batching --batching_parameters_file={root}/{BATCHING_PARAMETERS}",
            "batching_docker": f"--enable_batching --batching_parameters_file={root}/{BATCHING_PARAMETERS}",
        }
    return {
        "tensorflow_model_server": (f"tensorflow_model_server --rest_api_port=8501 --port=8500 "
                                    f"--model_config_file={root}/{MODELS_CONFIG} {timeout}"),
        "docker": (f"docker run --rm -p 8501:8501 -p 8500:8500 -v {root}:{DOCKER_MODELS_ROOT} tensorflow/serving "
                   f"--model_config_file={DOCKER_MODELS_ROOT}/{DOCKER_MODELS_CONFIG} {timeout}"),
        "batching": f"--enable_batching --batching_parameters_file={root}/{BATCHING_PARAMETERS}",
        "batching_docker": f"--enable_batching --batching_parameters_file={DOCKER_MODELS_ROOT}/{BATCHING_PARAMETERS}",
    }


def write_server_config(export_base: str, model_name: str, version: int, root: str | None = None) -> str:
    """In the model root ``root`` (default: export_base's parent folder; it must hold export_base):
    add or replace ``model_name``'s entry in ``models.config`` (base_path = the absolute export_base)
    and ``models.docker.config`` (base_path = /models/<export_base below the root>, for the root
    mounted at /models), and write ``batching_parameters.txt`` unless it exists. Returns the root."""
    root, export_base = serving_root(export_base, root)
    fileio.makedirs(root)
    with locked(os.path.join(root, ".models.config.lock")):
        update_models_config(os.path.join(root, MODELS_CONFIG), model_name, export_base, version)
        update_models_config(os.path.join(root, DOCKER_MODELS_CONFIG), model_name,
                             _docker_base_path(root, export_base), version)
        batching = os.path.join(root, BATCHING_PARAMETERS)
        if not fileio.exists(batching):
            atomic_write_text(batching, batching_parameters_text())
    return root


class locked:  # noqa: N801  (used as a context manager, like open)
    """An exclusive ``flock`` on ``path`` (no-op where fcntl is missing, and for a file-system URL:
    module docstring): two exports of different models into one folder must not lose each other's
    models.config entries."""

    def __init__(self, path: str):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        if fileio.is_remote(self.path):
            return self
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None
