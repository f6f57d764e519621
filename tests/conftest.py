"""Shared test helpers: tiny folder datasets, an in-process CLI runner, the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

# Tiny ERL-Net widths for CLI and training tests (flags form).
TINY_FLAGS = ["--erl_widths=8,16", "--erl_bottleneck_width=16", "--erl_dense_layers=2", "--erl_growth=8", "--erl_se_ratio=2"]


def shared_data_dir() -> Path | None:
    env = os.environ.get("ERL_DERAIN_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def write_png(path: Path, rgb_float: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.clip(np.round(rgb_float * 255), 0, 255).astype(np.uint8)
    assert cv2.imwrite(str(path), img[..., ::-1])


def make_folder_dataset(root: Path, n: int = 4, size=(40, 48), seed: int = 0) -> Path:
    """rainy/ and clean/ with matching names; rainy = clean + bright vertical streaks."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        clean = np.stack([0.3 + 0.3 * np.sin(xx / (3 + i)), 0.4 + 0.2 * np.cos(yy / 5), 0.5 * np.ones((h, w))], -1)
        clean = np.clip(clean + 0.05 * rng.random((h, w, 3)), 0, 1)
        streaks = (rng.random((1, w)) < 0.15) * (rng.random((h, 1)) < 0.8)
        rainy = np.clip(clean + 0.5 * streaks[..., None], 0, 1)
        write_png(root / "rainy" / f"img{i}.png", rainy)
        write_png(root / "clean" / f"img{i}.png", clean)
    return root


def run_settings(model_dir) -> dict:
    """A run folder's settings as one flat mapping of flag names (``method``, ``dataset``, ``erl_widths``, ...)."""
    from erl_derain.run_config import read_record

    return read_record(str(model_dir)).flat()


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    return make_folder_dataset(tmp_path / "data")


@pytest.fixture
def run_cli(capsys):
    """Run ``erl-derain <args>`` in this process; returns (exit code, stdout, stderr)."""
    from absl import flags

    from erl_derain import cli

    def run(*args: str):
        flags.FLAGS.unparse_flags()
        argv = flags.FLAGS(["erl-derain", *args])
        code = cli.main(argv)
        out = capsys.readouterr()
        return code or 0, out.out, out.err

    yield run
    flags.FLAGS.unparse_flags()
