"""Table IV's "w/o. S", "w/o. M", "w/o. L" (Xu et al., "Intensity-Aware Single-Image Deraining with
Semantic and Color Regularization", IEEE TIP 2021, Section IV.C): training without the cityscapes_rain
examples of small (filter radius 0.2), medium (0.4, 0.6) or large (0.8, 1.0) streaks, from the
pipelines' ``exclude`` and the CLI's ``--exclude_rain_sizes``. The reference is the ``rain_radius``
each example records, read here straight from the built dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from erl_derain.data import pipelines
from tfds_builders import builder_testing as bt
from tfds_builders.cityscapes_rain import cityscapes_rain_dataset_builder as cb

from .conftest import make_folder_dataset, run_settings

DUMMY = Path(__file__).resolve().parents[1] / "tfds_builders" / "cityscapes_rain" / "dummy_data"
PAPER_SIZES = {"small": {0.2}, "medium": {0.4, 0.6}, "large": {0.8, 1.0}}  # Section IV.C


@pytest.fixture(scope="module")
def renders3(tmp_path_factory):
    """cityscapes_rain on dummy_data with 3 renderings per image: 9 training examples of mixed radii."""
    config = cb.CityscapesRainConfig(name="sizes_test", max_side=1024, renders=3)
    builder = bt.build(cb.Builder, DUMMY, tmp_path_factory.mktemp("tfds"), config=config)
    radius = {ex["name"].decode(): round(float(ex["rain_radius"]), 1)
              for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert len(radius) == 9 and {cb.SIZE_OF_RADIUS[r] for r in radius.values()} == set(PAPER_SIZES)
    return builder, radius


def _names(ds, n):
    return [ex["name"].numpy()[0].decode() for ex in ds.take(n)]


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_training_stream_leaves_out_one_size_and_epochs_count_the_rest(renders3, size):
    builder, radius = renders3
    kept = sorted(n for n, r in radius.items() if r not in PAPER_SIZES[size])
    exclude = cb.exclude_rain_sizes([size])
    assert set(exclude["rain_radius"]) == PAPER_SIZES[size]
    ds = pipelines.paired_dataset(builder, "train", batch_size=1, crop_size=8, seed=3, crop_mode="scale_rotate",
                                  exclude=exclude)
    names = _names(ds, 3 * len(kept))
    for epoch in range(3):  # each epoch is a permutation of the kept examples
        assert sorted(names[epoch * len(kept):(epoch + 1) * len(kept)]) == kept
    assert pipelines.num_examples(builder, "train", exclude=exclude) == len(kept)
    assert int(pipelines.excluded_examples(builder, "train", exclude).sum()) == len(radius) - len(kept)


def test_filtered_stream_is_deterministic_and_resumes(renders3):
    builder, radius = renders3
    kw = dict(batch_size=1, crop_size=8, seed=11, crop_mode="scale_rotate", exclude={"rain_radius": (0.4, 0.6)},
              extra_features=("segmentation",))
    kept = sum(r not in PAPER_SIZES["medium"] for r in radius.values())
    full = list(pipelines.paired_dataset(builder, "train", **kw).take(2 * kept))
    again = list(pipelines.paired_dataset(builder, "train", **kw).take(2 * kept))
    start = kept + 1  # a resume in the second epoch
    tail = list(pipelines.paired_dataset(builder, "train", start_index=start, **kw).take(2 * kept - start))
    for a, b in zip(full, again):
        np.testing.assert_array_equal(a["rainy"].numpy(), b["rainy"].numpy())
    for a, b in zip(full[start:], tail):
        assert a["name"].numpy() == b["name"].numpy()
        np.testing.assert_array_equal(a["rainy"].numpy(), b["rainy"].numpy())
        np.testing.assert_array_equal(a["segmentation"].numpy(), b["segmentation"].numpy())


def test_exclusion_errors_name_the_feature(renders3, tmp_path):
    builder, _ = renders3
    with pytest.raises(pipelines.DatasetError, match="'rain_size'.*no such feature"):
        pipelines.paired_dataset(builder, "train", crop_size=8, exclude={"rain_size": ("small",)})
    folder = make_folder_dataset(tmp_path / "pairs", n=1, size=(16, 16))
    with pytest.raises(pipelines.DatasetError, match="folder"):
        pipelines.paired_dataset(f"folder:{folder}", "train", crop_size=8, exclude={"rain_radius": (0.2,)})
    with pytest.raises(ValueError, match="--exclude_rain_sizes.*small,medium,large"):
        cb.exclude_rain_sizes(["tiny"])
    with pytest.raises(ValueError, match="--exclude_rain_sizes.*every training example"):
        cb.exclude_rain_sizes(["small", "medium", "large"])
    with pytest.raises(ValueError, match="--exclude_rain_sizes.*'rain_radius'.*--dataset=rain800"):
        cb.exclude_rain_sizes(["small"], ["rainy", "clean", "name"], dataset="rain800")


TINY_IADN = ["--method=iadn", "--iadn_width=8", "--iadn_blocks=1", "--iadn_php_groups=2", "--crop_size=8",
             "--batch_size=1", "--jit_compile=false", "--noevaluate_after"]


def test_cli_trains_without_medium_streaks(run_cli, tmp_path):
    """Default cityscapes_rain on dummy_data: train radii 0.4, 0.2, 0.6 (aachen 19, aachen 29, bochum):
    without medium streaks one example is left, so 2 epochs are 2 steps (6 with all three)."""
    data = ["--dataset=cityscapes_rain", f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={DUMMY}"]
    code, out, err = run_cli("train", f"--model_dir={tmp_path / 'run'}", *data, *TINY_IADN, "--stage_epochs=2",
                             "--exclude_rain_sizes=medium")
    assert code == 0, err
    assert "(2 steps)" in out and "l_seg" in out
    config = run_settings(tmp_path / "run")
    assert config["exclude_rain_sizes"] == ("medium",)
    code, _, err = run_cli("train", f"--model_dir={tmp_path / 'bad'}", *data, *TINY_IADN, "--stage_steps=1",
                           "--exclude_rain_sizes=tiny")
    assert code == 1 and "--exclude_rain_sizes" in err and "small,medium,large" in err
    folder = make_folder_dataset(tmp_path / "pairs", n=1, size=(16, 16))
    code, _, err = run_cli("train", f"--model_dir={tmp_path / 'bad2'}", f"--dataset=folder:{folder}", *TINY_IADN,
                           "--stage_steps=1", "--exclude_rain_sizes=small")
    assert code == 1 and "--exclude_rain_sizes" in err and "rain_radius" in err
