"""Today's streams, pinned: the first batches of the default paired and unpaired streams (folder and
TFDS, cached and streamed, fresh and resumed), evaluation, ten-crop and scale-rotate orders, each
compared with what the data layer yielded before the streams were rebuilt on
``erl_derain.data.streams`` (the ``EXPECTED`` values were computed with that earlier code, running
:func:`observe` on the same inputs).

Images encode their coordinates (R = x, G = y, B = a per-image tag), so every example is recorded as
``(name, x0, y0, flipped)``: which window of which image, and whether it was mirrored; the maps
(``segmentation``, ``rain_mask``) encode theirs too, and are recorded the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from erl_derain.data import pipelines, unpaired

tfds.disable_progress_bar()

SPECS = [(f"p{i}", 14 + (i * 5) % 9, 15 + (i * 7) % 11) for i in range(7)]  # (name, height, width)
CROP = 12


def coord_image(height, width, tag):
    y, x = np.mgrid[:height, :width]
    return np.stack([x, y, np.full_like(x, tag)], axis=-1).astype(np.uint8)


def coord_map(height, width, channel):
    """uint8 [h, w, 1]: x in the segmentation (channel 0), y in the rain mask (channel 1)."""
    y, x = np.mgrid[:height, :width]
    return (x if channel == 0 else y)[..., None].astype(np.uint8)


class DataReferencePairs(tfds.core.GeneratorBasedBuilder):
    """Seven coordinate-image pairs with coordinate maps and scalars ('data_reference_pairs')."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "rainy": tfds.features.Image(shape=(None, None, 3)),
            "clean": tfds.features.Image(shape=(None, None, 3)),
            "name": tfds.features.Text(),
            "segmentation": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            "rain_mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            "has_rain_mask": tfds.features.Tensor(shape=(), dtype=np.bool_),
            "rain_radius": tfds.features.Scalar(dtype=np.float32)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (name, h, w) in enumerate(SPECS):
            yield name, {"rainy": coord_image(h, w, 2 * i), "clean": coord_image(h, w, 2 * i + 1), "name": name,
                         "segmentation": coord_map(h, w, 0), "rain_mask": coord_map(h, w, 1),
                         "has_rain_mask": bool(i % 2), "rain_radius": (0.2, 0.4, 0.6)[i % 3]}


def make_sources(root):
    """(folder source, TFDS data_dir) holding the SPECS images."""
    folder = root / "folder"
    for sub in ("rainy", "clean"):
        (folder / sub).mkdir(parents=True)
    for i, (name, h, w) in enumerate(SPECS):
        Image.fromarray(coord_image(h, w, 2 * i)).save(folder / "rainy" / f"{name}.png")
        Image.fromarray(coord_image(h, w, 2 * i + 1)).save(folder / "clean" / f"{name}.png")
    data_dir = str(root / "tfds")
    DataReferencePairs(data_dir=data_dir).download_and_prepare()
    return f"folder:{folder}", data_dir


def window(image):
    """(x0, y0, flipped) of a crop of a coordinate image (float in [0, 1] or uint8)."""
    v = np.asarray(image)
    v = np.round(v * 255).astype(int) if v.dtype.kind == "f" else v.astype(int)
    flipped = bool(v.shape[1] > 1 and v[0, 0, 0] > v[0, -1, 0])
    return int(v[0, -1, 0] if flipped else v[0, 0, 0]), int(v[0, 0, 1]), flipped


def describe(ds, batches):
    """Per example: (name, rainy window, clean tag, [segmentation x0, rain-mask y0], [scalars])."""
    out = []
    for batch in ds.take(batches):
        for j in range(batch["name"].shape[0]):
            row = [batch["name"][j].numpy().decode(), *window(batch["rainy"][j].numpy())]
            if "clean" in batch:
                row.append(int(round(float(batch["clean"][j].numpy()[0, 0, 2]) * 255)))
            if "segmentation" in batch:
                row.append(int(batch["segmentation"][j].numpy()[0, 0, 0]))
            if "rain_mask" in batch:
                row.append(int(batch["rain_mask"][j].numpy()[0, 0, 0]))
            if "has_rain_mask" in batch:
                row.append(bool(batch["has_rain_mask"][j].numpy()))
            out.append(tuple(row))
    return out


def describe_corners(ds, batches):
    """Per example of a channel-shuffled stream: (name, rainy and clean top-left and bottom-right pixels)."""
    out = []
    for batch in ds.take(batches):
        for j in range(batch["name"].shape[0]):
            row = [batch["name"][j].numpy().decode()]
            for key in ("rainy", "clean"):
                v = np.round(batch[key][j].numpy() * 255).astype(int)
                row += [tuple(int(c) for c in v[0, 0]), tuple(int(c) for c in v[-1, -1])]
            out.append(tuple(row))
    return out


def describe_means(ds, batches):
    """Per example of a resized (scale_rotate) stream: (name, rainy mean to 3 decimals)."""
    return [(batch["name"][j].numpy().decode(), round(float(np.mean(batch["rainy"][j].numpy())), 3))
            for batch in ds.take(batches) for j in range(batch["name"].shape[0])]


def _features(*names) -> dict:
    """``extra_features=names`` where the pipelines take it (the earlier code carried exactly these
    by default: segmentation in training, rain_mask/has_rain_mask/segmentation in evaluation, none
    with ten_crop), so the pinned streams do not depend on the default."""
    import inspect  # pylint: disable=import-outside-toplevel

    takes = "extra_features" in inspect.signature(pipelines.paired_dataset).parameters
    return {"extra_features": names} if takes else {}


def observe(folder, data_dir) -> dict:
    """What the streams yield; the same calls run on the earlier code gave `EXPECTED`."""
    name = "data_reference_pairs"
    train, evaluation = _features("segmentation"), _features("rain_mask", "has_rain_mask", "segmentation")
    got = {}
    for start in (0, 5):
        got[f"folder_s{start}"] = describe(pipelines.paired_dataset(
            folder, batch_size=2, crop_size=CROP, seed=3, start_index=start), 5)
        for cache in (None, 0):
            got[f"tfds_c{cache}_s{start}"] = describe(pipelines.paired_dataset(
                name, batch_size=2, crop_size=CROP, seed=5, start_index=start, data_dir=data_dir, shuffle_buffer=3,
                cache_limit_bytes=cache, **train), 5)
        got[f"unpaired_s{start}"] = describe(unpaired.unpaired_dataset(
            folder, batch_size=2, crop_size=CROP, seed=1, start_index=start), 4)
    got["tfds_ten_streamed"] = describe(pipelines.paired_dataset(
        name, batch_size=4, crop_size=CROP, seed=2, data_dir=data_dir, crop_mode="ten_crop", shuffle_buffer=3,
        cache_limit_bytes=0, **_features()), 4)
    got["folder_ten"] = describe(pipelines.paired_dataset(folder, batch_size=4, crop_size=CROP, seed=2,
                                                          crop_mode="ten_crop"), 4)
    got["tfds_scale_rotate"] = describe_means(pipelines.paired_dataset(
        name, batch_size=2, crop_size=CROP, seed=7, data_dir=data_dir, crop_mode="scale_rotate", **train), 4)
    got["tfds_exclude"] = describe(pipelines.paired_dataset(
        name, batch_size=2, crop_size=CROP, seed=5, data_dir=data_dir, exclude={"rain_radius": (0.4,)}, **train), 4)
    got["tfds_eval"] = describe(pipelines.paired_dataset(name, batch_size=3, crop_size=CROP, training=False,
                                                         data_dir=data_dir, start_index=1, **evaluation), 3)
    got["channel_shuffle"] = describe_corners(pipelines.shuffle_channels(pipelines.paired_dataset(
        folder, batch_size=2, crop_size=CROP, seed=4, start_index=4), seed=4, start_index=4, batch_size=2), 2)
    return got


# Computed with the data layer before the rebuild: commit 506956a's erl_derain/data and tfds_builders plus the
# then uncommitted data changes (half-turn rotation, ten-crop stream and centre rounding, exclude).
EXPECTED = {
    'channel_shuffle': [('p4', (8, 4, 2), (8, 15, 13), (9, 4, 2), (9, 15, 13)),
                        ('p6', (12, 0, 13), (12, 11, 2), (13, 0, 13), (13, 11, 2)),
                        ('p5', (4, 2, 10), (15, 13, 10), (4, 2, 11), (15, 13, 11)),
                        ('p1', (13, 3, 2), (2, 14, 2), (13, 3, 3), (2, 14, 3))],
    'folder_s0': [('p1', 10, 2, False, 3), ('p6', 10, 0, True, 13), ('p0', 1, 2, True, 1), ('p3', 8, 8, True, 7),
                  ('p5', 0, 3, False, 11), ('p4', 0, 0, True, 9), ('p2', 6, 2, True, 5), ('p4', 1, 1, True, 9),
                  ('p1', 0, 4, True, 3), ('p0', 1, 2, True, 1)],
    'folder_s5': [('p4', 0, 0, True, 9), ('p2', 6, 2, True, 5), ('p4', 1, 1, True, 9), ('p1', 0, 4, True, 3),
                  ('p0', 1, 2, True, 1), ('p5', 2, 6, True, 11), ('p6', 10, 5, True, 13), ('p3', 2, 8, False, 7),
                  ('p2', 3, 2, False, 5), ('p3', 7, 5, True, 7)],
    'folder_ten': [('p4', 0, 4, True, 9), ('p6', 6, 2, True, 13), ('p6', 12, 5, False, 13), ('p4', 9, 0, False, 9),
                   ('p2', 0, 3, False, 5), ('p2', 0, 3, True, 5), ('p6', 6, 2, False, 13), ('p4', 9, 0, True, 9),
                   ('p0', 3, 0, False, 1), ('p2', 3, 2, False, 5), ('p6', 12, 0, False, 13),
                   ('p6', 0, 5, True, 13), ('p6', 0, 0, True, 13), ('p4', 0, 4, False, 9), ('p5', 5, 0, False, 11),
                   ('p1', 0, 0, False, 3)],
    'tfds_c0_s0': [('p4', 9, 3, False, 9, 9), ('p0', 3, 1, True, 1, 14), ('p3', 9, 5, False, 7, 9),
                   ('p1', 4, 7, True, 3, 15), ('p2', 4, 0, False, 5, 4), ('p6', 8, 4, True, 13, 19),
                   ('p5', 3, 9, True, 11, 14), ('p4', 8, 4, True, 9, 19), ('p0', 3, 1, True, 1, 14),
                   ('p3', 8, 5, False, 7, 8)],
    'tfds_c0_s5': [('p6', 8, 4, True, 13, 19), ('p5', 3, 9, True, 11, 14), ('p4', 8, 4, True, 9, 19),
                   ('p0', 3, 1, True, 1, 14), ('p3', 8, 5, False, 7, 8), ('p1', 0, 6, False, 3, 0),
                   ('p5', 4, 3, False, 11, 4), ('p2', 6, 0, True, 5, 17), ('p6', 10, 1, False, 13, 10),
                   ('p0', 0, 1, True, 1, 11)],
    'tfds_cNone_s0': [('p6', 10, 0, False, 13, 10), ('p0', 3, 1, True, 1, 14), ('p3', 9, 5, False, 7, 9),
                      ('p4', 1, 0, True, 9, 12), ('p2', 4, 0, False, 5, 4), ('p1', 7, 6, True, 3, 18),
                      ('p5', 3, 9, True, 11, 14), ('p2', 0, 3, True, 5, 11), ('p0', 3, 1, True, 1, 14),
                      ('p6', 6, 5, False, 13, 6)],
    'tfds_cNone_s5': [('p1', 7, 6, True, 3, 18), ('p5', 3, 9, True, 11, 14), ('p2', 0, 3, True, 5, 11),
                      ('p0', 3, 1, True, 1, 14), ('p6', 6, 5, False, 13, 6), ('p3', 2, 3, False, 7, 2),
                      ('p5', 4, 3, False, 11, 4), ('p4', 4, 3, True, 9, 15), ('p1', 4, 1, False, 3, 4),
                      ('p5', 2, 9, True, 11, 13)],
    'tfds_eval': [('p0', 1, 1, False, 1, 1, 1, False), ('p1', 5, 3, False, 3, 5, 3, True),
                  ('p3', 6, 4, False, 7, 6, 4, True), ('p5', 2, 4, False, 11, 2, 4, True),
                  ('p2', 3, 1, False, 5, 3, 1, False), ('p6', 6, 2, False, 13, 6, 2, False)],
    'tfds_exclude': [('p6', 10, 0, False, 13, 10), ('p3', 7, 1, True, 7, 18), ('p2', 2, 1, False, 5, 2),
                     ('p0', 1, 1, True, 1, 12), ('p5', 4, 6, False, 11, 4), ('p2', 6, 2, True, 5, 17),
                     ('p3', 9, 1, True, 7, 20), ('p0', 2, 1, True, 1, 13)],
    'tfds_scale_rotate': [('p3', 0.032), ('p2', 0.028), ('p6', 0.036), ('p5', 0.044), ('p1', 0.03), ('p0', 0.018),
                          ('p4', 0.035), ('p4', 0.031)],
    'tfds_ten_streamed': [('p4', 9, 4, False, 9), ('p1', 10, 7, True, 3), ('p3', 0, 8, True, 7),
                          ('p0', 3, 2, True, 1), ('p5', 5, 0, True, 11), ('p2', 6, 3, True, 5),
                          ('p6', 12, 5, False, 13), ('p1', 0, 7, True, 3), ('p3', 0, 0, True, 7),
                          ('p0', 1, 1, True, 1), ('p2', 0, 3, True, 5), ('p4', 0, 4, True, 9),
                          ('p6', 0, 0, True, 13), ('p5', 0, 9, True, 11), ('p0', 0, 0, False, 1),
                          ('p3', 0, 0, False, 7)],
    'unpaired_s0': [('p3', 11, 7, False), ('p4', 7, 0, True), ('p0', 2, 2, False), ('p6', 6, 4, False),
                    ('p2', 1, 2, True), ('p5', 5, 9, False), ('p1', 2, 5, False), ('p6', 9, 1, True)],
    'unpaired_s5': [('p5', 5, 9, False), ('p1', 2, 5, False), ('p6', 9, 1, True), ('p1', 0, 6, True),
                    ('p3', 4, 6, False), ('p4', 7, 3, True), ('p2', 3, 1, False), ('p0', 3, 2, True)],
}


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    return observe(*make_sources(tmp_path_factory.mktemp("reference")))


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_stream_is_unchanged(observed, key):
    assert observed[key] == EXPECTED[key]


if __name__ == "__main__":  # print EXPECTED for the code on PYTHONPATH
    import pprint
    import tempfile
    from pathlib import Path

    pprint.pprint(observe(*make_sources(Path(tempfile.mkdtemp()))), width=120, compact=True)
