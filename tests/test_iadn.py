"""Intensity-aware network: the loss of Eq. 5, the segmentation net's gradient, the CLI path (train,
evaluate, derain, export). Table IV's ablations: test_iadn_table4.py; Phi's structure, the loss
weights' defaults and the flagfiles: test_iadn_protocol.py."""

import json

import numpy as np
import pytest
import tensorflow as tf

from erl_derain import losses
from erl_derain.methods import iadn

from .conftest import make_folder_dataset, run_settings

TINY = iadn.IADNConfig(width=8, blocks=1, refine_blocks=1, groups=2, num_classes=5)


def _batch(seed=0, with_labels=False):
    rng = np.random.default_rng(seed)
    clean = rng.uniform(0.1, 0.9, (1, 16, 16, 3)).astype(np.float32)
    rainy = np.clip(clean + 0.5 * (rng.random((1, 16, 1, 1)) > 0.8), 0, 1).astype(np.float32)
    batch = {"rainy": tf.constant(rainy), "clean": tf.constant(clean)}
    if with_labels:
        labels = rng.integers(0, 5, (1, 16, 16, 1)).astype(np.uint8)
        labels[0, :2] = 255  # ignored pixels
        batch["segmentation"] = tf.constant(labels)
    return batch


def _trainer(cfg=TINY, **kw):
    t = iadn.IADNTrainer(cfg, **kw)
    t.build_networks((1, 16, 16, 3))
    return t


def _snapshot(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _changed(before, model):
    return [not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_variables)]


def test_without_labels_the_segmentation_net_gets_no_gradient():
    t = _trainer()
    seg_before, net_before = _snapshot(t.seg_net), _snapshot(t.net)
    logs = tf.function(t.train_step)(_batch())
    assert "l_seg" not in logs
    assert not any(_changed(seg_before, t.seg_net))
    assert any(_changed(net_before, t.net))


def test_with_labels_the_loss_is_eq_5_and_phi_trains():
    t = _trainer(lambdas=(1.0, 1.0, 0.1, 0.05), gaussian_kernel=3)
    batch = _batch(1, with_labels=True)
    # Eq. 5 computed here from the parts, before the step changes the weights.
    x_c, x = t.net(batch["rainy"])
    expected = (float(losses.charbonnier(losses.gaussian_lowpass(batch["clean"], 3), x_c))
                + float(losses.charbonnier(batch["clean"], x))
                + 0.1 * float(losses.colour_cosine(batch["clean"], x_c))
                + 0.05 * float(losses.segmentation_ce(batch["segmentation"], t.seg_net(x_c))))
    seg_before = _snapshot(t.seg_net)
    logs = {k: float(v) for k, v in t.train_step(batch).items()}
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"loss", "l_acc_c", "l_acc", "l_col", "l_seg"}
    assert any(_changed(seg_before, t.seg_net))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="--iadn_gaussian_kernel"):
        iadn.IADNTrainer(TINY, gaussian_kernel=4)
    with pytest.raises(ValueError, match="--iadn_contrast_pooling"):
        iadn.IADN(iadn.IADNConfig(contrast_pooling="avg"))
    with pytest.raises(ValueError, match="--iadn_lambda_col"):
        iadn.IADNTrainer(TINY, lambdas=(1.0, 1.0, -0.1, 0.05))


def test_cli_train_evaluate_export(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 32))
    model_dir = tmp_path / "run"
    code, out, err = run_cli("train", "--method=iadn", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
                             "--iadn_width=8", "--iadn_blocks=1", "--iadn_php_groups=2", "--crop_size=16",
                             "--crop_mode=scale_rotate", "--flip", "--batch_size=1", "--stage_steps=2",
                             "--jit_compile=false", "--evaluate_after", "--eval_split=test")
    assert code == 0, err
    config = run_settings(model_dir)
    assert config["method"] == "iadn" and config["lr"] == pytest.approx(3e-4)
    assert "Mean over 2 images" in out and "l_col" in out
    photo = tmp_path / "odd.png"
    import cv2

    cv2.imwrite(str(photo), (np.random.default_rng(0).random((19, 27, 3)) * 255).astype(np.uint8))
    code, _, err = run_cli("derain", f"--model_dir={model_dir}", f"--output_dir={tmp_path / 'out'}", str(photo))
    assert code == 0, err
    assert cv2.imread(str(tmp_path / "out" / "odd.png")).shape == (19, 27, 3)
    code, out, err = run_cli("export", f"--model_dir={model_dir}", f"--export_base={tmp_path / 'exp' / 'iadn'}")
    assert code == 0, err
    # The export holds the inference network only: its variables add up to the deraining network's
    # parameters, not those of the segmentation network too.
    from erl_derain.training import load_trainer

    trainer, _ = load_trainer(str(model_dir))
    saved = tf.train.list_variables(str(tmp_path / "exp" / "iadn" / "1" / "variables" / "variables"))
    n_saved = sum(int(np.prod(shape)) for name, shape in saved if "OBJECT_GRAPH" not in name)
    assert n_saved == trainer.net.count_params() < trainer.net.count_params() + trainer.seg_net.count_params()


def test_cli_trains_with_segmentation_labels_from_cityscapes_rain(run_cli, tmp_path):
    """The labels of the cityscapes_rain builder (built from its dummy_data) reach the step, cropped
    with the images: L_seg is on."""
    from pathlib import Path

    dummy = Path(__file__).resolve().parents[1] / "tfds_builders" / "cityscapes_rain" / "dummy_data"
    code, out, err = run_cli("train", "--method=iadn", f"--model_dir={tmp_path / 'run'}",
                             "--dataset=cityscapes_rain", f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={dummy}",
                             "--iadn_width=8", "--iadn_blocks=1", "--iadn_php_groups=2", "--crop_size=16",
                             "--crop_mode=scale_rotate", "--flip", "--batch_size=1", "--stage_steps=2",
                             "--jit_compile=false", "--noevaluate_after")
    assert code == 0, err
    assert "l_seg" in out
