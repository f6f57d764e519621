"""Input sharding for multi-worker training: each worker's stream holds only its rows of every
global batch (``data.streams.Rows``), and the rows of all workers side by side are the global batch
of the unsharded stream: the same examples, crops, flips and channel orders, also after a resume.
A file only another worker reads is never decoded here. (The two-process run on loopback, which
prints each worker's rows and equals the one-device weights, is in test_distribute.py.)"""

import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from erl_derain import distribute
from erl_derain.data import pipelines, unpaired
from erl_derain.data.streams import DatasetError, Rows

from .conftest import make_folder_dataset
from .test_pipelines import PipelineTestPairs, examples  # noqa: F401  (registers the TFDS test builder)

GLOBAL = 4
WORKERS = [Rows(0, 2, GLOBAL), Rows(2, 2, GLOBAL)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("shard") / "data", n=6, size=(20, 24))


def _side_by_side(make, start_index=0, num_batches=5):
    """Batches of the global stream, and the workers' batches concatenated row-wise."""
    whole = list(make(start_index, None).take(num_batches))
    parts = [list(make(start_index, rows).take(num_batches)) for rows in WORKERS]
    for w, rows in zip(parts, WORKERS):
        assert all(b["rainy"].shape[0] == rows.count for b in w)
    joined = [{k: np.concatenate([p[i][k].numpy() for p in parts]) for k in whole[0]} for i in range(num_batches)]
    return [{k: v.numpy() for k, v in b.items()} for b in whole], joined


def _assert_equal(whole, joined):
    assert len(whole) == len(joined)
    for a, b in zip(whole, joined):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("crop_mode,channel_shuffle", [("random", False), ("random", True), ("ten_crop", False),
                                                        ("scale_rotate", False)])
@pytest.mark.parametrize("start_index", [0, 8])
def test_folder_workers_together_are_the_global_stream(folder, crop_mode, channel_shuffle, start_index):
    def make(start, rows):
        ds = pipelines.paired_dataset(f"folder:{folder}", "train", batch_size=GLOBAL, crop_size=16, seed=3,
                                      start_index=start, flip=True, crop_mode=crop_mode, rows=rows)
        if channel_shuffle:
            ds = pipelines.shuffle_channels(ds, seed=3, start_index=start, batch_size=GLOBAL, rows=rows)
        return ds

    _assert_equal(*_side_by_side(make, start_index))  # 5 batches of 4 over 6 pairs: across epochs


@pytest.mark.parametrize("cache_limit_bytes", [None, 0], ids=["cached", "streamed"])
def test_tfds_workers_together_are_the_global_stream(tmp_path_factory, cache_limit_bytes):
    data_dir = str(tmp_path_factory.mktemp("tfds_shard"))

    def make(start, rows):
        return pipelines.paired_dataset("pipeline_test_pairs", "train", batch_size=GLOBAL, crop_size=12, seed=1,
                                        start_index=start, data_dir=data_dir, shuffle_buffer=3,
                                        cache_limit_bytes=cache_limit_bytes, rows=rows)

    _assert_equal(*_side_by_side(make, 4))


def test_unpaired_workers_together_are_the_global_stream(folder):
    def make(start, rows):
        return unpaired.unpaired_dataset(f"folder:{folder}/rainy", batch_size=GLOBAL, crop_size=16, seed=5,
                                         start_index=start, rows=rows)

    _assert_equal(*_side_by_side(make))


def _break_pixels(path):
    """Replace a PNG's compressed pixels by bytes zlib cannot inflate, with valid chunk CRCs: the
    header scan (which checks the CRCs) passes, decoding fails."""
    data = path.read_bytes()
    out, i = bytearray(data[:8]), 8
    while i < len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + length]
        if kind == b"IDAT":
            body = b"\x78\x9c" + bytes(255 - b for b in body[2:])
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        i += 12 + length
    path.write_bytes(bytes(out))


def test_a_worker_never_decodes_the_other_workers_files(tmp_path):
    """12 pairs, global batch 4: one epoch is 3 batches. The pair at row 2 of the first batch is
    broken: worker 1 (rows 2-3) fails on its first batch, the unsharded stream too, and worker 0
    (rows 0-1) reads its whole first epoch."""
    data = make_folder_dataset(tmp_path / "data", n=12, size=(20, 24))

    def make(rows):
        return pipelines.paired_dataset(f"folder:{data}", "train", batch_size=GLOBAL, crop_size=16, seed=0,
                                        rows=rows)

    first = next(iter(make(None)))
    broken = first["name"][2].numpy().decode()
    _break_pixels(data / "rainy" / f"{broken}.png")
    worker0 = list(make(WORKERS[0]).take(3))
    names0 = {n.decode() for b in worker0 for n in b["name"].numpy()}
    assert len(names0) == 6 and broken not in names0  # half of the epoch's 12 examples
    for rows in (WORKERS[1], None):
        with pytest.raises(tf.errors.InvalidArgumentError):
            next(iter(make(rows)))


def test_worker_rows_by_hand():
    """W workers with L replicas each and per-replica batch b: worker w reads rows [w L b, (w + 1) L b)."""
    class TwoWorkers:  # (only the replica count matters)
        def __init__(self, replicas):
            self.num_replicas_in_sync = replicas

    assert distribute.worker_rows(TwoWorkers(2), 4, 0, 1) is None  # one worker reads everything
    assert distribute.worker_rows(TwoWorkers(2), 4, 0, 2) == Rows(0, 2, 4)
    assert distribute.worker_rows(TwoWorkers(2), 4, 1, 2) == Rows(2, 2, 4)
    assert distribute.worker_rows(TwoWorkers(4), 16, 1, 2) == Rows(8, 8, 16)


def test_bad_rows_are_clear_errors(folder):
    with pytest.raises(DatasetError, match="not rows of a global batch"):
        Rows(3, 2, 4)
    with pytest.raises(DatasetError, match="start_index=2 is not a multiple of 4"):
        pipelines.paired_dataset(f"folder:{folder}", batch_size=4, crop_size=16, start_index=2, rows=WORKERS[0])
    with pytest.raises(DatasetError, match="for training streams"):
        pipelines.paired_dataset(f"folder:{folder}", training=False, batch_size=4, rows=WORKERS[0])
    with pytest.raises(DatasetError, match="global batch of 4"):
        pipelines.paired_dataset(f"folder:{folder}", batch_size=2, crop_size=16, rows=WORKERS[0])
