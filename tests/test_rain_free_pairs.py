"""--rain_free_fraction (pipelines.rain_free_pairs): a fraction of the training pairs made rain-free
(rainy image := clean image), drawn per example from (seed, position): checked against what each
example must become by construction, for resumption, a worker's rows and the rain-mask feature."""

import numpy as np
import pytest
import tensorflow as tf

from erl_derain.data import pipelines, streams


def stream(start: int, n_batches: int, batch: int = 2, size: int = 4):
    """Batches of examples at positions start, start+1, ...: rainy = position + 1000, clean = position
    (constant images), rain_mask = 1 everywhere."""
    def example(p):
        p = tf.cast(p, tf.float32)
        return {"rainy": tf.fill([size, size, 3], p + 1000.0), "clean": tf.fill([size, size, 3], p),
                "rain_mask": tf.ones([size, size, 1], tf.uint8)}
    return tf.data.Dataset.range(start, start + n_batches * batch).map(example).batch(batch)


def flat(ds):
    """[(position, rain-free?, mask kept?)] of every example, checking each is one of the two legal cases."""
    out = []
    for b in ds:
        for rainy, clean, mask in zip(b["rainy"].numpy(), b["clean"].numpy(), b["rain_mask"].numpy()):
            position = int(clean[0, 0, 0])
            free = bool(np.all(rainy == clean))
            assert free or np.all(rainy == position + 1000.0)
            assert np.all(mask == (0 if free else 1))
            out.append((position, free))
    return out


def test_fraction_zero_and_one():
    assert [f for _, f in flat(pipelines.rain_free_pairs(stream(0, 5), fraction=0.0, seed=3, start_index=0,
                                                           batch_size=2))] == [False] * 10
    assert [f for _, f in flat(pipelines.rain_free_pairs(stream(0, 5), fraction=1.0, seed=3, start_index=0,
                                                           batch_size=2))] == [True] * 10


def test_fraction_is_the_share_and_draws_depend_on_the_seed():
    n = 2000
    a = flat(pipelines.rain_free_pairs(stream(0, n // 4, batch=4), fraction=0.3, seed=1, start_index=0, batch_size=4))
    b = flat(pipelines.rain_free_pairs(stream(0, n // 4, batch=4), fraction=0.3, seed=2, start_index=0, batch_size=4))
    share = sum(f for _, f in a) / n
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5  # binomial: 4 standard deviations
    assert [f for _, f in a] != [f for _, f in b]


def test_resumed_stream_and_a_workers_rows_draw_as_the_whole():
    whole = dict(flat(pipelines.rain_free_pairs(stream(0, 8), fraction=0.5, seed=9, start_index=0, batch_size=2)))
    resumed = dict(flat(pipelines.rain_free_pairs(stream(6, 5), fraction=0.5, seed=9, start_index=6, batch_size=2)))
    assert all(whole[p] == f for p, f in resumed.items() if p in whole) and len(resumed) == 10
    assert 0 < sum(whole.values()) < 16
    # worker 1 of 2 reads row 1 of each global batch of 2 (positions 1, 3, 5, ...)
    rows = streams.Rows(first=1, count=1, period=2)
    odd = tf.data.Dataset.range(1, 16, 2).map(lambda p: {
        "rainy": tf.fill([4, 4, 3], tf.cast(p, tf.float32) + 1000.0), "clean": tf.fill([4, 4, 3], tf.cast(p, tf.float32)),
        "rain_mask": tf.ones([4, 4, 1], tf.uint8)}).batch(1)
    shard = dict(flat(pipelines.rain_free_pairs(odd, fraction=0.5, seed=9, start_index=0, batch_size=2, rows=rows)))
    assert shard == {p: whole[p] for p in range(1, 16, 2)}


def test_other_streams_keep_their_keys():
    # the new stream's key is apart from every earlier stream's, which keep seed * 4 + stream
    assert streams.op_seed(2, streams.STREAM_COLOR, 5).numpy().tolist() == [11, 5]
    keys = {tuple(streams.op_seed(s, k, 0).numpy()) for s in range(5) for k in range(5)}
    assert len(keys) == 25


def test_fraction_out_of_range():
    with pytest.raises(pipelines.DatasetError, match="rain_free_fraction"):
        pipelines.rain_free_pairs(stream(0, 1), fraction=1.5, seed=0, start_index=0, batch_size=2)
