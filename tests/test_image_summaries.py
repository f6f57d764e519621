"""TensorBoard pictures (--image_summary_every): rainy input | output | clean target of a fixed validation
batch, checked against the image files and against the trained network reloaded from its checkpoint."""

import glob

import numpy as np
import tensorflow as tf

from erl_derain.data.image_io import load_rgb
from erl_derain.training import load_trainer

from .conftest import TINY_FLAGS, make_folder_dataset


def _images(model_dir):
    """{(tag, global step): [uint8 pictures]} from the run's event files."""
    out = {}
    for path in glob.glob(str(model_dir / "logs" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "images":
                    continue
                blobs = tf.make_ndarray(value.tensor)  # [width, height, png...]
                out[(value.tag, event.step)] = [tf.io.decode_png(b).numpy() for b in blobs[2:]]
    return out


def _centre(a, side):
    top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
    return a[top:top + side, left:left + side]


def _u8(a):
    return np.floor(np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def test_pictures_every_n_steps_and_at_stage_ends(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=4, size=(40, 48))
    model_dir = tmp_path / "run"
    code, out, err = run_cli("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16",
                             "--batch_size=2", "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS,
                             "--erl_schedule=ma_d", "--stage_steps=3,1,2", "--image_summary_every=2")
    assert code == 0, err
    pictures = _images(model_dir)
    # every 2 stage steps and at each stage's last step, at the global step
    assert sorted(pictures) == [("images/I", 2), ("images/I", 3), ("images/II", 4), ("images/III", 6)]
    # the fixed batch: the first 3 images of --eval_split (the folder itself here), centre-cropped to 40x40
    names = ["img0", "img1", "img2"]
    rainy = np.stack([_centre(load_rgb(str(data / "rainy" / f"{n}.png")), 40) for n in names])
    clean = np.stack([_centre(load_rgb(str(data / "clean" / f"{n}.png")), 40) for n in names])
    last = pictures[("images/III", 6)]
    assert len(last) == 3 and last[0].shape == (40, 120, 3)
    trainer, _ = load_trainer(str(model_dir))  # the network as the run ended
    output = trainer.inference_model()(tf.constant(rainy)).numpy()
    for k, picture in enumerate(last):
        np.testing.assert_array_equal(picture[:, :40], _u8(rainy[k]))
        np.testing.assert_array_equal(picture[:, 80:], _u8(clean[k]))
        assert np.abs(picture[:, 40:80].astype(int) - _u8(output[k]).astype(int)).max() <= 1
    # the output column changes as the network trains; the input and target columns do not
    first = pictures[("images/I", 2)]
    np.testing.assert_array_equal(first[0][:, :40], last[0][:, :40])
    assert not np.array_equal(first[0][:, 40:80], last[0][:, 40:80])


def test_no_pictures_with_zero(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    model_dir = tmp_path / "run"
    code, _, err = run_cli("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16",
                           "--batch_size=2", "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS,
                           "--method=memd", "--stage_steps=2", "--image_summary_every=0")
    assert code == 0, err
    assert _images(model_dir) == {}


def test_batch_falls_back_to_the_first_training_batch(tmp_path):
    from erl_derain import inputs
    from erl_derain.methods import get_method
    from erl_derain.run_config import RunConfig, make_record

    spec = get_method("memd")
    record = make_record("memd", RunConfig(dataset=f"folder:{tmp_path / 'missing'}"), spec.config_class())
    fallback = {"rainy": np.full((4, 16, 20, 3), 0.25, np.float32), "clean": np.full((4, 16, 20, 3), 0.5, np.float32),
                "name": np.array([b"a", b"b", b"c", b"d"])}
    batch = inputs.image_summary_batch(record, "test", fallback=lambda: fallback)
    assert batch["rainy"].shape == (3, 16, 16, 3) and batch["name"] == ["a", "b", "c"]
    assert inputs.image_summary_batch(record, "test") is None
