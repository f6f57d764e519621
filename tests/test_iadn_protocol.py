"""The intensity-aware paper's protocol (Xu et al., "Intensity-Aware Single-Image Deraining with
Semantic and Color Regularization", IEEE TIP 2021): the segmentation network Phi has the deraining
network's structure (Section III.D), Eq. 5's weights default to 1, 1, 0.1, 0.05 (Section III.C), and
the flagfiles of Tables I, II and IV's w/o S / M / L rows and the Cityscapes evaluation split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from erl_derain import cli  # noqa: F401  (defines the flags)
from erl_derain.methods import iadn

TINY = iadn.IADNConfig(width=8, blocks=1, refine_blocks=1, groups=2, num_classes=5)
FLAGS_DIR = Path(__file__).resolve().parents[1] / "flags" / "iadn"


def _built(cfg):
    t = iadn.IADNTrainer(cfg)
    t.build_networks((1, 16, 16, 3))
    return t


# ----------------------------------------------------------------------------- Phi (Section III.D)

def test_segmentation_network_has_the_whole_deraining_structure():
    """"We share the same network structure of the segmentation network to our deraining network":
    Phi = both sub-networks, the last 1x1 conv giving the classes instead of 3 channels."""
    t = _built(TINY)
    w, c = TINY.width, TINY.num_classes
    net_paths = {v.path: tuple(v.shape) for v in t.net.weights}
    seg_paths = {v.path: tuple(v.shape) for v in t.seg_net.weights}
    expected = {"segmentation/" + p[len("iadn/"):]: s for p, s in net_paths.items()}
    expected["segmentation/sub2/last/kernel"] = (1, 1, w, c)
    expected["segmentation/sub2/last/bias"] = (c,)
    assert seg_paths == expected
    # parameters: the deraining network's, with the 3-channel last conv (w*3+3) replaced by a c-class one
    assert t.seg_net.count_params() == t.net.count_params() - (w * 3 + 3) + (w * c + c)
    logits = t.seg_net(tf.zeros((2, 12, 10, 3)))
    assert tuple(logits.shape) == (2, 12, 10, c)


def test_segmentation_network_follows_the_no_refinement_ablation_and_the_legacy_option():
    w, c = TINY.width, TINY.num_classes
    solo = _built(dataclasses.replace(TINY, refinement=False))
    assert solo.seg_net.count_params() == solo.net.count_params() - (w * 3 + 3) + (w * c + c)
    legacy = _built(dataclasses.replace(TINY, seg_net="sub1"))  # the names runs made before used
    sub1 = {v.path[len("iadn/sub1/"):] for v in legacy.net.weights if v.path.startswith("iadn/sub1/")}
    assert {v.path for v in legacy.seg_net.weights} == {"segmentation/" + p for p in sub1}
    with pytest.raises(ValueError, match="--iadn_seg_net"):
        iadn.IADNTrainer(dataclasses.replace(TINY, seg_net="pspnet"))


def test_l_seg_trains_both_parts_of_phi():
    t = _built(TINY)
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.1, 0.9, (1, 16, 16, 3)).astype(np.float32)
    batch = {"rainy": tf.constant(np.clip(clean + 0.3, 0, 1)), "clean": tf.constant(clean),
             "segmentation": tf.constant(rng.integers(0, TINY.num_classes, (1, 16, 16, 1)).astype(np.uint8))}
    before = {v.path: v.numpy().copy() for v in t.seg_net.trainable_variables}
    t.train_step(batch)
    moved = {p for p, v in ((v.path, v) for v in t.seg_net.trainable_variables) if not np.array_equal(before[p], v)}
    assert any(p.startswith("segmentation/sub1/") for p in moved)
    assert "segmentation/sub2/last/kernel" in moved


# ----------------------------------------------------------------------------- Eq. 5 weights

def test_unset_loss_weights_take_their_terms_defaults():
    """Section III.C: lambda_1 = lambda_2 = 1, lambda_3 = 0.1, lambda_4 = 0.05; a weight left unset
    (missing or None in a run's settings) takes that default, not 1."""
    base = {"method": "iadn", "iadn_width": 8, "iadn_blocks": 1, "php_groups": 2}
    unset = {k: None for k in ("lambda_acc_c", "lambda_acc", "lambda_col", "lambda_seg")}
    assert iadn.trainer_from_config({**base, **unset}).lambdas == (1.0, 1.0, 0.1, 0.05)
    assert iadn.trainer_from_config(base).lambdas == (1.0, 1.0, 0.1, 0.05)
    assert iadn.trainer_from_config({**base, **unset, "lambda_col": 0}).lambdas == (1.0, 1.0, 0.0, 0.05)


# ----------------------------------------------------------------------------- flagfiles

def _parse(flagfile: Path, *extra: str):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["erl-derain", f"--flagfile={flagfile}", *extra])
    return flags.FLAGS


@pytest.fixture
def clean_flags():
    yield
    flags.FLAGS.unparse_flags()


def test_cityscapes_flagfiles_evaluate_on_a_split_the_dataset_has(clean_flags):
    """cityscapes_rain has train and val (the paper's 500 test images), no test split: the runs'
    --evaluate_after must use val."""
    files = sorted(FLAGS_DIR.glob("cityscapes_rain*.flags"))
    for f in files:
        fl = _parse(f)
        assert fl.dataset == "cityscapes_rain" and fl.evaluate_after, f
        assert fl.eval_split == "val", f
    assert len(files) == 14  # the main run, Table III's two rows and Table IV's eleven implemented rows


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_rain_size_flagfiles_are_the_main_run_without_one_size(size, clean_flags):
    from erl_derain import cli

    _parse(FLAGS_DIR / "cityscapes_rain.flags")
    main = cli._record_from_flags().flat()
    _parse(FLAGS_DIR / f"cityscapes_rain_no_{size}.flags")
    ablation = cli._record_from_flags().flat()
    assert ablation["exclude_rain_sizes"] == (size,)
    assert flags.FLAGS.model_dir == f"runs/iadn_cityscapes_rain_no_{size}"
    differ = {k for k in main if main[k] != ablation[k]}
    assert differ == {"exclude_rain_sizes"}


def test_table_1_flagfile_evaluates_the_cityscapes_model_on_the_other_sets(monkeypatch, tmp_path, clean_flags):
    """Table I: the model trained on cityscapes_rain with L_seg, evaluated on Rain800, DID-MDN and DDN
    (their test splits): one cross-dataset table."""
    from erl_derain import cli, evaluation, training

    _parse(FLAGS_DIR / "cityscapes_rain.flags")
    trained = cli._record_from_flags().flat()
    assert trained["iadn_lambda_seg"] > 0 and trained["dataset"] == "cityscapes_rain"
    model_dir = flags.FLAGS.model_dir

    calls = []
    monkeypatch.setattr(training, "load_trainer",
                        lambda m: (type("T", (), {"inference_model": lambda self: None, "pad_multiple": 1})(),
                                   training.as_record({"dataset": "cityscapes_rain", "method": "iadn"})))
    monkeypatch.setattr(cli, "_evaluate", lambda model, m, dataset, split, *a, **k:
                        calls.append((m, dataset, split)) or {"psnr_y": 1.0, "ssim_y": 0.5})
    monkeypatch.setattr(evaluation, "cross_dataset_table", lambda results, out: (str(tmp_path / "t.md"), "t.csv"))
    (tmp_path / "t.md").write_text("table\n")
    fl = _parse(FLAGS_DIR / "table1_cross_dataset.flags")
    cli.FLAGS_VERB = "evaluate"
    assert cli.cmd_evaluate() == 0
    assert calls == [(model_dir, "rain800", "test"), (model_dir, "did", "test"), (model_dir, "ddn", "test")]
    assert fl.output

    calls.clear()
    _parse(FLAGS_DIR / "table1_cityscapes.flags")
    monkeypatch.setattr(cli, "_evaluate", lambda model, m, dataset, split, *a, **k:
                        calls.append((m, dataset, split)))
    cli.cmd_evaluate()
    assert calls == [(model_dir, "cityscapes_rain", "val")]


def test_table_1_and_2_test_sets_exist():
    """The splits the Table I / II flagfiles evaluate are splits of those builders."""
    from tfds_builders.cityscapes_rain import cityscapes_rain_dataset_builder as cb
    from tfds_builders.ddn import ddn_dataset_builder as ddn
    from tfds_builders.did import did_dataset_builder as did
    from tfds_builders.rain800 import rain800_dataset_builder as rain800

    for module in (ddn, did, rain800):
        assert "test" in module.Builder.EXPECTED_COUNTS
    assert cb.Builder.EXPECTED_COUNTS["val"] == (500,)  # "Cityscapes validation set (500 images)"
    text = (FLAGS_DIR / "table2_rain800.flags").read_text()
    assert "--model_dir=runs/iadn_did,runs/iadn_cityscapes_rain" in text and "--dataset=rain800" in text
