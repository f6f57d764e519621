"""Atomic writes (erl_derain.fileio): content, no temporary file left, the old file kept on failure."""

import os

import pytest

from erl_derain import fileio


def test_atomic_writes(tmp_path):
    path = tmp_path / "a.json"
    fileio.atomic_write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    fileio.atomic_write_bytes(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    fileio.atomic_write_text(tmp_path / "sub" / "b.txt", "x", make_parents=True)
    assert (tmp_path / "sub" / "b.txt").read_text() == "x"
    with fileio.atomic_open(tmp_path / "c.bin") as f:
        f.write(b"abc")
    assert (tmp_path / "c.bin").read_bytes() == b"abc"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "c.bin", "sub"]  # no temporary files left


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with fileio.atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(ValueError, match="mode"):
        with fileio.atomic_open(path, "a"):
            pass


def test_training_keeps_its_name_for_the_shared_helper():
    from erl_derain import training

    assert training.atomic_write_text is fileio.atomic_write_text
