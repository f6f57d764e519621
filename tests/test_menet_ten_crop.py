"""MENET's ten-crop training order (``--crop_mode=ten_crop``) from a TFDS dataset and a folder.

The authors' ``heavy/build_h5_dataset.py`` (SumiHui/MENET) cuts every training image into ten 224x224
crops (corners and centre of the image and of its left-right mirror) and shuffles all ``10 N`` crops
into one h5 file, which ``heavy/data_helper.py`` reshuffles every epoch: the crops of one image are
spread over the epoch. These tests build coordinate images (R = x, G = y, B = a per-image tag), find
which of the ten crops every example is by reading its pixels, and check: every (image, crop) exactly
once per epoch, few crops of one image in a batch of 20, determinism and exact resumption.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from erl_derain.data.pipelines import paired_dataset

tfds.disable_progress_bar()

NUM = 40                # images
CROP = 8
BATCH = 20              # the authors' batch
SIZES = [(12 + i % 5, 14 + i % 3) for i in range(NUM)]   # (height, width), each side > CROP + 1


def coord_image(height, width, tag):
    y, x = np.mgrid[:height, :width]
    return np.stack([x, y, np.full_like(x, tag)], axis=-1).astype(np.uint8)


def crop_windows(height, width, crop=CROP):
    """The ten crops of the authors' FiveCrop(crop, horizontal_flip=True), worked by hand: (flipped,
    top, left) with left counted on the (mirrored) image that is cut; the centre at Python's
    round((h - c) / 2), halves to even, as their ``center_crop`` (some sides here give 3.5 -> 4, where
    floor division would give 3)."""
    dh, dw = height - crop, width - crop
    corners = [(0, 0), (0, dw), (dh, 0), (dh, dw), (int(round(dh / 2)), int(round(dw / 2)))]
    return [(flipped, top, left) for flipped in (False, True) for top, left in corners]


def identify(rainy, clean):
    """(image index, crop number 0..9) of one example, checking that the crop is the exact window
    and that rainy and clean were cut alike."""
    r = np.round(rainy * 255).astype(int)
    c = np.round(clean * 255).astype(int)
    tag = r[0, 0, 2]
    assert tag % 2 == 0 and np.all(r[..., 2] == tag) and np.all(c[..., 2] == tag + 1)
    index = tag // 2
    height, width = SIZES[index]
    np.testing.assert_array_equal(r[..., :2], c[..., :2])
    flipped = r[0, 0, 0] > r[0, -1, 0]
    top = r[0, 0, 1]
    left = (width - 1 - r[0, 0, 0]) if flipped else r[0, 0, 0]
    k = crop_windows(height, width).index((bool(flipped), int(top), int(left)))
    image = coord_image(height, width, 2 * index)
    if flipped:
        image = image[:, ::-1]
    np.testing.assert_array_equal(r, image[top:top + CROP, left:left + CROP])
    return int(index), k


class MenetTenCropPairs(tfds.core.GeneratorBasedBuilder):
    """Forty coordinate-image pairs (registered as 'menet_ten_crop_pairs')."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "rainy": tfds.features.Image(shape=(None, None, 3)),
            "clean": tfds.features.Image(shape=(None, None, 3)),
            "name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (h, w) in enumerate(SIZES):
            yield f"im{i}", {"rainy": coord_image(h, w, 2 * i), "clean": coord_image(h, w, 2 * i + 1),
                             "name": f"im{i}"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    MenetTenCropPairs(data_dir=data_dir).download_and_prepare()
    folder = tmp_path_factory.mktemp("folder")
    for sub in ("rainy", "clean"):
        (folder / sub).mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(coord_image(h, w, 2 * i)).save(folder / "rainy" / f"im{i}.png")
        Image.fromarray(coord_image(h, w, 2 * i + 1)).save(folder / "clean" / f"im{i}.png")
    return {"data_dir": data_dir, "folder": f"folder:{folder}"}


def stream(sources, kind, *, start_index=0, batches, seed=3):
    if kind == "folder":
        ds = paired_dataset(sources["folder"], "train", batch_size=BATCH, crop_size=CROP, seed=seed,
                            start_index=start_index, crop_mode="ten_crop")
    else:
        ds = paired_dataset("menet_ten_crop_pairs", "train", batch_size=BATCH, crop_size=CROP, seed=seed,
                            start_index=start_index, crop_mode="ten_crop", data_dir=sources["data_dir"],
                            shuffle_buffer=8, cache_limit_bytes=None if kind == "tfds_cached" else 0)
    out = []
    for batch in ds.take(batches):
        for j in range(BATCH):
            out.append(identify(batch["rainy"][j].numpy(), batch["clean"][j].numpy())
                       + (batch["name"][j].numpy().decode(),))
    return out


KINDS = ["tfds_cached", "tfds_streamed", "folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_crop_once_per_epoch_and_few_crops_of_one_image_per_batch(sources, kind):
    per_epoch = NUM * 10
    got = stream(sources, kind, batches=2 * per_epoch // BATCH)
    assert all(name == f"im{i}" for i, _, name in got)
    for epoch in range(2):
        crops = [(i, k) for i, k, _ in got[epoch * per_epoch:(epoch + 1) * per_epoch]]
        assert sorted(crops) == [(i, k) for i in range(NUM) for k in range(10)]
    most = [max(collections.Counter(i for i, _, _ in got[b:b + BATCH]).values())
            for b in range(0, len(got), BATCH)]
    # A uniform permutation of 400 crops puts about 20 * 10 / 400 = 0.5 crops of an image in a batch of
    # 20: the most of one image in a batch is 2 on average, 4 at worst here. The crops of ten records
    # mixed in a small buffer gave about 7 of 20 from one image (10 at worst).
    assert np.mean(most) <= 2.5 and max(most) <= 4, most
    if kind == "tfds_streamed":  # stratified: an image's ten crops lie in ten different tenths
        for epoch in range(2):
            tenth_of = collections.defaultdict(list)
            for p, (i, _, _) in enumerate(got[epoch * per_epoch:(epoch + 1) * per_epoch]):
                tenth_of[i].append(p // NUM)
            assert all(sorted(t) == list(range(10)) for t in tenth_of.values())


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_order_and_exact_resume(sources, kind):
    full = stream(sources, kind, batches=30)   # 600 examples: epoch 0 and half of epoch 1
    assert stream(sources, kind, batches=30) == full
    assert stream(sources, kind, batches=30, seed=4) != full
    for start in (20 * 7, 20 * 23):  # resume at a batch boundary (start_index = step * batch_size)
        assert stream(sources, kind, start_index=start, batches=(600 - start) // BATCH) == full[start:]
    # the epochs are different permutations
    assert [x[:2] for x in full[:200]] != [x[:2] for x in full[400:600]]
