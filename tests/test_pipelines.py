"""Tests for erl_derain.data.pipelines (paired tf.data pipelines from folders and TFDS).

Images encode their own coordinates (R = x, G = y, B = a per-image tag), so every crop can be
located in its source image: that checks that a crop is a real window, that rainy and clean got the
same window and flip, and that pixel values are exactly source / 255.
"""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from erl_derain.data import pipelines
from erl_derain.data.pipelines import DatasetError, diagnose_folder, list_folder_pairs, paired_dataset

from .conftest import make_folder_dataset

tfds.disable_progress_bar()

# (name, height, width); natural order img1 < img2 < img10 differs from lexicographic order.
SPECS = [("img1", 20, 24), ("img2", 18, 30), ("img10", 25, 25), ("img3", 16, 22), ("img4", 21, 19)]
NATURAL_ORDER = ["img1", "img2", "img3", "img4", "img10"]
CROP = 12


def coord_image(height, width, tag):
    """uint8 RGB image with R = x, G = y, B = tag."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x, y, np.full_like(x, tag)], axis=-1).astype(np.uint8)


def rainy_tag(index):
    return 2 * index


def clean_tag(index):
    return 2 * index + 1


def make_folder(root, specs=SPECS, rainy_ext=".png", clean_ext=".png"):
    """rainy/ and clean/ with coordinate images; returns {name: (index, height, width)}."""
    os.makedirs(root / "rainy", exist_ok=True)
    os.makedirs(root / "clean", exist_ok=True)
    for i, (name, h, w) in enumerate(specs):
        Image.fromarray(coord_image(h, w, rainy_tag(i))).save(root / "rainy" / f"{name}{rainy_ext}")
        Image.fromarray(coord_image(h, w, clean_tag(i))).save(root / "clean" / f"{name}{clean_ext}")
    return {name: (i, h, w) for i, (name, h, w) in enumerate(specs)}


def examples(ds, num_batches):
    """Flatten `num_batches` batches into a list of per-example dicts of numpy values."""
    out = []
    for batch in ds.take(num_batches):
        for j in range(batch["name"].shape[0]):
            out.append({k: batch[k][j].numpy() for k in ("rainy", "clean", "name")})
    return out


def locate_crop(example, index_by_name, crop):
    """Recover (x0, y0, flipped) from a crop and assert it is the exact source window, for both images."""
    name = example["name"].decode()
    index, height, width = index_by_name[name]
    r = np.round(example["rainy"] * 255).astype(int)
    flipped = r[0, 0, 0] > r[0, -1, 0]
    x0 = r[0, -1, 0] if flipped else r[0, 0, 0]
    y0 = r[0, 0, 1]
    assert 0 <= x0 <= width - crop and 0 <= y0 <= height - crop
    for key, tag in (("rainy", rainy_tag(index)), ("clean", clean_tag(index))):
        window = coord_image(height, width, tag)[y0:y0 + crop, x0:x0 + crop]
        if flipped:
            window = window[:, ::-1]
        np.testing.assert_allclose(example[key], window / 255.0, atol=1e-6, err_msg=f"{key} of {name}")
    return x0, y0, flipped


def assert_same_examples(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert ea["name"] == eb["name"]
        np.testing.assert_array_equal(ea["rainy"], eb["rainy"])
        np.testing.assert_array_equal(ea["clean"], eb["clean"])


@pytest.fixture
def folder(tmp_path):
    index_by_name = make_folder(tmp_path)
    return f"folder:{tmp_path}", index_by_name


# --------------------------------------------------------------------------------------------------
# Folder pipeline
# --------------------------------------------------------------------------------------------------


def test_training_batches_shapes_values_and_same_crop_flip(folder):
    dataset, index_by_name = folder
    ds = paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=3)
    assert ds.element_spec["rainy"].shape.as_list() == [2, CROP, CROP, 3]
    flips = set()
    for batch in ds.take(10):
        assert batch["rainy"].dtype == tf.float32 and batch["clean"].dtype == tf.float32
        assert batch["name"].dtype == tf.string and batch["name"].shape == (2,)
        assert batch["clean"].shape == (2, CROP, CROP, 3)
        for j in range(2):
            example = {k: batch[k][j].numpy() for k in ("rainy", "clean", "name")}
            assert 0.0 <= example["rainy"].min() and example["rainy"].max() <= 1.0
            flips.add(locate_crop(example, index_by_name, CROP)[2])
    assert flips == {False, True}

    no_flip = examples(paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=3, flip=False), 10)
    assert not any(locate_crop(e, index_by_name, CROP)[2] for e in no_flip)


def test_same_seed_same_stream_and_other_seed_differs(folder):
    dataset, _ = folder
    a = examples(paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=7), 6)
    b = examples(paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=7), 6)
    assert_same_examples(a, b)
    c = examples(paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=8), 6)
    assert [e["name"] for e in a] != [e["name"] for e in c]
    assert any(not np.array_equal(ea["rainy"], ec["rainy"]) for ea, ec in zip(a, c))


def test_resume_equals_uninterrupted_stream_across_epochs(folder):
    dataset, _ = folder  # 5 examples per epoch
    full = examples(paired_dataset(dataset, batch_size=1, crop_size=CROP, seed=5), 14)
    for start in (3, 5, 9):
        resumed = examples(paired_dataset(dataset, batch_size=1, crop_size=CROP, seed=5, start_index=start),
                           14 - start)
        assert_same_examples(resumed, full[start:])
    # A trainer resuming at step 3 with batch_size 2 passes start_index = 6.
    full2 = examples(paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=5), 7)
    resumed2 = examples(paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=5, start_index=6), 4)
    assert_same_examples(resumed2, full2[6:])
    assert_same_examples(full2, full[:14])  # batching does not change the example stream


def test_every_example_once_per_epoch(folder):
    dataset, index_by_name = folder
    stream = examples(paired_dataset(dataset, batch_size=1, crop_size=CROP, seed=11), 15)
    names = [e["name"].decode() for e in stream]
    orders = [names[i:i + 5] for i in range(0, 15, 5)]
    for order in orders:
        assert sorted(order) == sorted(index_by_name)
    assert len({tuple(o) for o in orders}) > 1  # reshuffled per epoch


def test_evaluation_full_size_in_natural_file_order(folder):
    dataset, index_by_name = folder
    got = examples(paired_dataset(dataset, split="test", training=False), 100)
    assert [e["name"].decode() for e in got] == NATURAL_ORDER
    for e in got:
        index, h, w = index_by_name[e["name"].decode()]
        np.testing.assert_allclose(e["rainy"], coord_image(h, w, rainy_tag(index)) / 255.0, atol=1e-6)
        np.testing.assert_allclose(e["clean"], coord_image(h, w, clean_tag(index)) / 255.0, atol=1e-6)


def test_evaluation_centre_crop_batches_and_keeps_remainder(folder):
    dataset, _ = folder
    batches = list(paired_dataset(dataset, training=False, batch_size=2, crop_size=CROP))
    assert [b["rainy"].shape[0] for b in batches] == [2, 2, 1]
    first = np.round(batches[0]["rainy"][0].numpy() * 255)  # img1: 20x24 (HxW)
    assert first[0, 0, 0] == (24 - CROP) // 2 and first[0, 0, 1] == (20 - CROP) // 2


def test_eval_batch_without_crop_needs_one_size(folder):
    dataset, _ = folder
    with pytest.raises(DatasetError, match="crop_size"):
        paired_dataset(dataset, training=False, batch_size=2)


def test_split_subfolder_and_stem_matching_across_extensions(tmp_path):
    index_by_name = make_folder(tmp_path / "train", SPECS[:2], rainy_ext=".JPG", clean_ext=".png")
    make_folder(tmp_path / "test", SPECS[2:])
    pairs = list_folder_pairs(f"folder:{tmp_path}", "train")
    assert [(os.path.basename(r), os.path.basename(c), n) for r, c, n in pairs] == [
        ("img1.JPG", "img1.png", "img1"), ("img2.JPG", "img2.png", "img2")]
    got = examples(paired_dataset(f"folder:{tmp_path}", "test", training=False), 10)
    assert [e["name"].decode() for e in got] == ["img3", "img4", "img10"]
    train = examples(paired_dataset(f"folder:{tmp_path}", "train", batch_size=1, crop_size=CROP), 4)
    assert {e["name"].decode() for e in train} == set(index_by_name)


def test_decodes_grayscale_rgba_16bit_png_and_tiff(tmp_path):
    (tmp_path / "rainy").mkdir()
    (tmp_path / "clean").mkdir()
    rgb = coord_image(6, 7, 9)
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 100, np.uint8)], -1)
    rgb16 = rgb.astype(np.uint16) * 1000
    Image.fromarray(gray).save(tmp_path / "rainy" / "a_gray.png")
    Image.fromarray(rgba).save(tmp_path / "rainy" / "b_rgba.png")
    cv2.imwrite(str(tmp_path / "rainy" / "c_16bit.png"), rgb16[..., ::-1])
    cv2.imwrite(str(tmp_path / "rainy" / "d_16bit.tif"), rgb16[..., ::-1])
    Image.fromarray(rgb).save(tmp_path / "rainy" / "e_8bit.tiff")
    for name in ("a_gray", "b_rgba", "c_16bit", "d_16bit", "e_8bit"):
        Image.fromarray(rgb).save(tmp_path / "clean" / f"{name}.bmp")
    want = {
        "a_gray": np.repeat(gray[..., None], 3, -1) / 255.0,
        "b_rgba": rgb / 255.0,
        "c_16bit": rgb16 / 65535.0,
        "d_16bit": rgb16 / 65535.0,
        "e_8bit": rgb / 255.0,
    }
    got = examples(paired_dataset(f"folder:{tmp_path}", training=False), 10)
    assert [e["name"].decode() for e in got] == list(want)
    for e in got:
        np.testing.assert_allclose(e["rainy"], want[e["name"].decode()], atol=1e-6)
        np.testing.assert_allclose(e["clean"], rgb / 255.0, atol=1e-6)
    assert diagnose_folder(str(tmp_path)) == []


# --------------------------------------------------------------------------------------------------
# Folder errors
# --------------------------------------------------------------------------------------------------


def test_missing_partner_names_the_file(tmp_path):
    make_folder(tmp_path)
    os.remove(tmp_path / "clean" / "img2.png")
    Image.fromarray(coord_image(10, 10, 0)).save(tmp_path / "clean" / "extra.png")
    with pytest.raises(DatasetError) as info:
        paired_dataset(f"folder:{tmp_path}", crop_size=CROP)
    message = str(info.value)
    assert str(tmp_path / "rainy" / "img2.png") in message and "no clean partner" in message
    assert str(tmp_path / "clean" / "extra.png") in message and "no rainy partner" in message


def test_image_smaller_than_crop_names_file_size_and_crop(folder, tmp_path):
    dataset, _ = folder
    with pytest.raises(DatasetError) as info:
        paired_dataset(dataset, crop_size=17)
    message = str(info.value)
    assert str(tmp_path / "rainy" / "img3.png") in message  # 22x16 (WxH)
    assert "22x16" in message and "17x17" in message
    assert "img1" not in message  # 24x20 is large enough


def test_unreadable_file_is_named(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "rainy" / "img2.png").write_bytes(b"this is not an image at all")
    with pytest.raises(DatasetError, match="img2.png") as info:
        paired_dataset(f"folder:{tmp_path}", crop_size=CROP)
    assert "cannot read image" in str(info.value)
    problems = diagnose_folder(f"folder:{tmp_path}")
    assert [p[0] for p in problems] == [str(tmp_path / "rainy" / "img2.png")]


def test_truncated_png_is_named_and_diagnosed(tmp_path):
    make_folder(tmp_path, [("big", 64, 64), ("ok", 20, 20)])
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "clean" / "big.png")
    path = tmp_path / "clean" / "big.png"
    path.write_bytes(path.read_bytes()[:-4000])
    with pytest.raises(DatasetError, match=str(path)):
        paired_dataset(f"folder:{tmp_path}", crop_size=CROP)
    problems = diagnose_folder(str(tmp_path))
    assert [p[0] for p in problems] == [str(path)]


def test_size_mismatch_names_both_files(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(coord_image(20, 23, 1)).save(tmp_path / "clean" / "img1.png")
    with pytest.raises(DatasetError) as info:
        paired_dataset(f"folder:{tmp_path}", crop_size=CROP)
    message = str(info.value)
    assert str(tmp_path / "rainy" / "img1.png") in message and str(tmp_path / "clean" / "img1.png") in message
    assert "24x20" in message and "23x20" in message
    assert diagnose_folder(str(tmp_path))[0][0] == str(tmp_path / "rainy" / "img1.png")


def test_missing_subfolder_and_empty_folder(tmp_path):
    (tmp_path / "rainy").mkdir()
    with pytest.raises(DatasetError, match=r"no clean/ sub-folder"):
        paired_dataset(f"folder:{tmp_path}")
    (tmp_path / "clean").mkdir()
    (tmp_path / "rainy" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"no images in .*rainy"):
        paired_dataset(f"folder:{tmp_path}")
    with pytest.raises(DatasetError, match="does not exist"):
        paired_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_bad_arguments():
    with pytest.raises(DatasetError, match="batch_size"):
        paired_dataset("folder:/x", batch_size=0)
    with pytest.raises(DatasetError, match="start_index"):
        paired_dataset("folder:/x", start_index=-1)


# --------------------------------------------------------------------------------------------------
# TFDS pipeline, through a real tiny builder
# --------------------------------------------------------------------------------------------------

TFDS_SPECS = [(f"ex{i}", h, w) for i, (h, w) in enumerate([(20, 24), (18, 30), (25, 25), (16, 22), (21, 19),
                                                            (30, 17)])]


class PipelineTestPairs(tfds.core.GeneratorBasedBuilder):
    """Six coordinate-image pairs of different sizes (registered as 'pipeline_test_pairs')."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "rainy": tfds.features.Image(shape=(None, None, 3)),
                "clean": tfds.features.Image(shape=(None, None, 3)),
                "name": tfds.features.Text(),
            }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (name, h, w) in enumerate(TFDS_SPECS):
            yield name, {"rainy": coord_image(h, w, rainy_tag(i)), "clean": coord_image(h, w, clean_tag(i)),
                         "name": name}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


TFDS_INDEX = {name: (i, h, w) for i, (name, h, w) in enumerate(TFDS_SPECS)}


@pytest.mark.parametrize("cache_limit_bytes", [None, 0], ids=["cached", "streamed"])
def test_tfds_same_crop_resume_and_epochs(tfds_dir, cache_limit_bytes):
    def stream(start_index=0, num=14, **kw):
        ds = paired_dataset("pipeline_test_pairs", "train", batch_size=1, crop_size=CROP, seed=2,
                            start_index=start_index, data_dir=tfds_dir, shuffle_buffer=3,
                            cache_limit_bytes=cache_limit_bytes, **kw)
        return examples(ds, num)

    full = stream(num=18)
    for e in full:
        locate_crop(e, TFDS_INDEX, CROP)
    names = [e["name"].decode() for e in full]
    for epoch in range(3):
        assert sorted(names[6 * epoch:6 * epoch + 6]) == sorted(TFDS_INDEX)
    for start in (4, 6, 11):
        assert_same_examples(stream(start, 18 - start), full[start:])
    tf.random.set_seed(1234)  # the global seed does not change the stream
    try:
        assert_same_examples(stream(num=18), full)
    finally:
        tf.random.set_seed(None)


def test_tfds_evaluation_and_in_graph_crop_check(tfds_dir):
    got = examples(paired_dataset("pipeline_test_pairs", training=False, data_dir=tfds_dir), 10)
    assert sorted(e["name"].decode() for e in got) == sorted(TFDS_INDEX)
    for e in got:
        index, h, w = TFDS_INDEX[e["name"].decode()]
        np.testing.assert_allclose(e["rainy"], coord_image(h, w, rainy_tag(index)) / 255.0, atol=1e-6)
        np.testing.assert_allclose(e["clean"], coord_image(h, w, clean_tag(index)) / 255.0, atol=1e-6)
    # ex3 is 16 pixels high: a 17 crop fails in-graph with a message naming it.
    ds = paired_dataset("pipeline_test_pairs", crop_size=17, data_dir=tfds_dir, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)smaller than the 17x17 crop.*ex3"):
        examples(ds, 12)


def test_tfds_bad_split_and_unknown_dataset(tfds_dir):
    from erl_derain import datasets  # what entry points import: names resolve, unknown ones are listed

    with pytest.raises(DatasetError, match="no split 'validation'"):
        paired_dataset("pipeline_test_pairs", "validation", data_dir=tfds_dir)
    with pytest.raises(DatasetError) as info:
        paired_dataset("no_such_rain_dataset", data_dir=tfds_dir)
    message = str(info.value)
    assert "no_such_rain_dataset" in message and "folder:" in message
    for name in datasets.available_builders():
        assert name in message


def test_ten_crop_yields_every_corner_centre_and_mirror_once(tmp_path):
    """crop_mode='ten_crop' (MENET): each image gives the 4 corners + centre of itself and of its
    mirror, each exactly once per epoch, rainy and clean cut at the same place."""
    import cv2

    root = make_folder_dataset(tmp_path / "data", n=2, size=(20, 27))
    ds = paired_dataset(f"folder:{root}", "train", batch_size=1, crop_size=8, training=True, seed=4,
                        crop_mode="ten_crop")
    got = [(ex["name"].numpy()[0].decode(), ex["rainy"].numpy()[0], ex["clean"].numpy()[0]) for ex in ds.take(20)]
    for name in ("img0", "img1"):
        rainy = cv2.imread(str(root / "rainy" / f"{name}.png"))[..., ::-1].astype(np.float32) / 255
        clean = cv2.imread(str(root / "clean" / f"{name}.png"))[..., ::-1].astype(np.float32) / 255
        expected = []
        for r, c in ((rainy, clean), (rainy[:, ::-1], clean[:, ::-1])):
            # 20x27 image, 8x8 crops: tops 0, 0, 12, 12, 6; lefts 0, 19, 0, 19, 10 (the centre at the
            # authors' round(19 / 2) = 10, Python rounding halves to even)
            for top, left in ((0, 0), (0, 19), (12, 0), (12, 19), (6, 10)):
                expected.append((r[top:top + 8, left:left + 8], c[top:top + 8, left:left + 8]))
        mine = [(r, c) for n, r, c in got if n == name]
        assert len(mine) == 10
        for er, ec in expected:
            matches = [i for i, (r, c) in enumerate(mine) if np.allclose(r, er, atol=1e-6) and np.allclose(c, ec, atol=1e-6)]
            assert len(matches) == 1
    # Resuming at position k gives what the uninterrupted stream gives from k on.
    tail = paired_dataset(f"folder:{root}", "train", batch_size=1, crop_size=8, training=True, seed=4,
                          crop_mode="ten_crop", start_index=13)
    for (_, r, _), ex in zip(got[13:], tail.take(7)):
        np.testing.assert_array_equal(r, ex["rainy"].numpy()[0])


def test_ten_crop_from_tfds_records(tmp_path):
    """The TFDS path of ten_crop: one epoch holds every image exactly ten times, crops of one size."""
    from pathlib import Path

    from erl_derain import datasets

    dummy = Path(__file__).resolve().parents[1] / "tfds_builders" / "rain100h" / "dummy_data"
    builder = datasets.load_builder("rain100h", str(tmp_path / "tfds"))
    datasets.prepare(builder, manual_dir=str(dummy))
    n = builder.info.splits["train"].num_examples
    ds = paired_dataset("rain100h", "train", data_dir=str(tmp_path / "tfds"), batch_size=1, crop_size=8,
                        crop_mode="ten_crop", seed=1)
    names = [ex["name"].numpy()[0].decode() for ex in ds.take(10 * n)]
    assert sorted(set(names.count(x) for x in names)) == [10] and len(set(names)) == n
    ex = next(iter(ds))
    assert ex["rainy"].shape == (1, 8, 8, 3) and ex["clean"].shape == (1, 8, 8, 3)


def test_scale_rotate_crops_are_deterministic_and_resume(tmp_path):
    """crop_mode='scale_rotate': the same stream for a seed, a crop of the right size, rainy and
    clean transformed alike (rainy = clean + streaks, so rainy >= clean everywhere stays true)."""
    root = make_folder_dataset(tmp_path / "data", n=3, size=(40, 48))
    kw = dict(batch_size=1, crop_size=16, training=True, seed=7, crop_mode="scale_rotate", flip=True)
    a = [ex for ex in paired_dataset(f"folder:{root}", "train", **kw).take(6)]
    b = [ex for ex in paired_dataset(f"folder:{root}", "train", **kw).take(6)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["rainy"].numpy(), y["rainy"].numpy())
        assert x["rainy"].shape == (1, 16, 16, 3)
        # bilinear resizing is linear and monotone: the streaks stay non-negative
        assert (x["rainy"].numpy() - x["clean"].numpy()).min() > -1e-5
    tail = paired_dataset(f"folder:{root}", "train", start_index=4, **kw)
    for x, y in zip(a[4:], tail.take(2)):
        np.testing.assert_array_equal(x["rainy"].numpy(), y["rainy"].numpy())


def test_shuffle_channels_permutes_rainy_and_clean_alike_and_resumes(folder):
    """Each example's channels come out as one of the six RGB permutations (the coordinate images
    make the permutation readable: R = x, G = y, B = tag), the same one for rainy and clean; all six
    occur; a pixel's channel values are those of the unshuffled example in the permuted order; a
    stream resumed at example 6 (step 3, batch 2) equals the uninterrupted one."""
    dataset, _ = folder

    def stream(start_index, num_batches):
        ds = paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=4, start_index=start_index)
        return examples(pipelines.shuffle_channels(ds, seed=4, start_index=start_index, batch_size=2), num_batches)

    plain = examples(paired_dataset(dataset, batch_size=2, crop_size=CROP, seed=4), 30)
    shuffled = stream(0, 30)
    seen = set()
    for a, b in zip(plain, shuffled):
        assert a["name"] == b["name"]
        perm = next(p for p in pipelines.RGB_PERMUTATIONS if np.array_equal(b["rainy"], a["rainy"][..., list(p)]))
        np.testing.assert_array_equal(b["clean"], a["clean"][..., list(perm)])
        seen.add(perm)
    assert seen == set(pipelines.RGB_PERMUTATIONS)
    assert_same_examples(stream(6, 27), shuffled[6:])
