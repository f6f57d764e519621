"""JRGR's training options: the linear learning-rate decay of the authors' train.py (a generic schedule,
worked by hand), its CLI flag, and the flagfiles (each says whether it is the paper's Sec. 3.3 setting
or the authors' code's, and holds that setting; Table 2's learning-rate factors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags

from erl_derain import cli, training
from erl_derain.methods import make_trainer

from .conftest import TINY_FLAGS, make_folder_dataset

FLAGFILES = Path(__file__).resolve().parents[1] / "flags" / "jrgr"


def test_linear_decay_is_the_codes_rule_worked_by_hand():
    """lr of (1-based) epoch e: lr * (1 - max(0, e + 1 - N) / (D + 1)) (train.py steps its LambdaLR at the
    start of every epoch). N = 4, D = 3: epochs 1-3 at lr, then 3/4, 2/4, 1/4, epoch 7 = N + D at 0, later 0."""
    s = training.LinearDecaySchedule(2e-4, 4, 3, steps_per_epoch=3)
    expected = {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.75, 5: 0.5, 6: 0.25, 7: 0.0, 8: 0.0}
    for epoch, factor in expected.items():
        for step in (3 * epoch - 2, 3 * epoch):  # first and last step of the epoch
            assert s(step) == pytest.approx(2e-4 * factor, abs=1e-15), (epoch, step)
    # the code's defaults (n_epochs 100, n_epochs_decay 100): 99 epochs at lr, epoch 100 at 100/101, 200 at 0
    s = training.LinearDecaySchedule(1e-5, 100, 100, steps_per_epoch=10)
    assert [s(10 * e) / 1e-5 for e in (1, 99, 100, 150, 199, 200)] == pytest.approx(
        [1.0, 1.0, 100 / 101, 50 / 101, 1 / 101, 0.0])
    # fractional epochs (1800 pairs / batch 16 = 112.5 steps): step 113 is still epoch 1, 114 epoch 2
    s = training.LinearDecaySchedule(1.0, 1, 1, steps_per_epoch=112.5)
    assert (s(112), s(113), s(114)) == (0.5, 0.5, 0.0)
    # offset 0: stepped at the end of every epoch (pix2pix / CycleGAN): N full epochs, the last at lr/(D + 1)
    s = training.LinearDecaySchedule(1.0, 4, 3, steps_per_epoch=1, offset=0)
    assert [s(e) for e in range(1, 9)] == pytest.approx([1, 1, 1, 1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(training.TrainingError, match="epochs >= 0"):
        training.LinearDecaySchedule(1.0, -1, 3, steps_per_epoch=1)


@pytest.fixture
def parse():
    def run(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["erl-derain", *args])
        return flags.FLAGS

    yield run
    flags.FLAGS.unparse_flags()


def test_linear_decay_flag_builds_the_schedule_and_refuses_bad_values(parse, run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "d", n=4, size=(16, 16))
    parse(f"--dataset=folder:{data}", "--lr_linear_decay_epochs=2,3", "--lr=1e-3")
    from erl_derain import inputs

    schedule = inputs.lr_schedule(cli._record_from_flags(), 2)  # 4 pairs / batch 2: 2 steps per epoch
    assert isinstance(schedule, training.LinearDecaySchedule)
    # N = 2, D = 3: epoch 1 at lr, epochs 2, 3, 4 at 3/4, 2/4, 1/4, epoch 5 at 0
    assert [schedule(s) / 1e-3 for s in range(1, 11)] == pytest.approx([1, 1, .75, .75, .5, .5, .25, .25, 0, 0])
    base = ["train", "--method=memd", f"--model_dir={tmp_path / 'run'}", f"--dataset=folder:{data}", "--crop_size=16",
            "--stage_steps=1", "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS]
    code, _, err = run_cli(*base, "--lr_linear_decay_epochs=2,3", "--lr_decay_steps=5")
    assert code == 1 and "give --lr_linear_decay_epochs or --lr_decay_epochs / --lr_decay_steps, not both" in err
    code, _, err = run_cli(*base, "--lr_linear_decay_epochs=100")
    assert code == 1 and "--lr_linear_decay_epochs must be two whole numbers >= 0, N,D" in err and "got 100" in err
    code, _, err = run_cli(*base, "--lr_linear_decay_epochs=1,x")
    assert code == 2 and "--lr_linear_decay_epochs" in err and "'x'" in err


def _flagfile(name) -> dict:
    values = {}
    for line in (FLAGFILES / name).read_text().splitlines():
        if line.startswith("--"):
            key, _, value = line[2:].partition("=")
            values[key] = value if value else True
    return values


def _header(name) -> str:
    return (FLAGFILES / name).read_text().splitlines()[0]


def test_the_code_flagfile_holds_the_authors_training_options():
    """options/train_options.py (lr 1e-5, lr_policy linear, n_epochs 100 + n_epochs_decay 100, beta1 0.5,
    pool 50), base_options.py (batch 1, crop 256, unet_128 / resnet_9blocks / basic D, ngf = ndf = 64),
    raincycle_model.py (lambda_GAN 4, lambda_Cycle 40, lambda_MSE 40, init_derain 1,3), rain_dataset.py
    (no flip); the unetderain pre-training runs with the same options."""
    assert _header("rain100h_code.flags").startswith("# Setting: code.")
    f = _flagfile("rain100h_code.flags")
    expected = {"lr": "1e-5", "batch_size": "1", "crop_size": "256", "noflip": True, "jrgr_beta_1": "0.5",
                "lr_linear_decay_epochs": "100,100", "stage_epochs": "200,200", "jrgr_lambda_adv": "4",
                "jrgr_lambda_cyc": "40", "jrgr_lambda_mse": "40", "jrgr_alpha": "4", "jrgr_pool_size": "50",
                "jrgr_schedule": "proposed", "jrgr_pretrain": "shared", "jrgr_unet_depth": "7", "jrgr_unet_filters": "64",
                "jrgr_resnet_blocks": "9", "jrgr_gen_filters": "64", "jrgr_gen_norm": "batch", "jrgr_disc_filters": "64",
                "jrgr_disc_layers": "3"}
    assert {k: f.get(k) for k in expected} == expected
    assert "jrgr_fs_lr_factor" not in f and "jrgr_fr_lr_factor" not in f  # the rule: /100 and /10 (both pre-trained)


PAPER_ROWS = {  # flagfile -> (strategy, weights adv/adv_b/adv_o/cyc/mse, F_s and F_r lr factors by Table 2)
    "rain100h_paper.flags": ("proposed", dict(jrgr_lambda_cyc="1", jrgr_lambda_mse="10"), (0.01, 0.1)),
    "rain100h_init1.flags": ("init1", dict(jrgr_lambda_cyc="1", jrgr_lambda_mse="10"), (1.0, 1.0)),
    "rain100h_init2.flags": ("init2", dict(jrgr_lambda_cyc="1", jrgr_lambda_mse="10"), (0.01, 1.0)),
    "rain100h_no_adv_b.flags": ("proposed", dict(jrgr_lambda_adv_b="0"), (0.01, 0.1)),
    "rain100h_no_adv_o.flags": ("proposed", dict(jrgr_lambda_adv_o="0"), (0.01, 0.1)),
    "rain100h_no_cyc.flags": ("proposed", dict(jrgr_lambda_cyc="0", jrgr_lambda_mse="10"), (0.01, 0.1)),
    "rain100h_no_mse.flags": ("proposed", dict(jrgr_lambda_cyc="1", jrgr_lambda_mse="0"), (0.01, 0.1)),
}


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_flagfiles_hold_sec_3_3_and_table_2(name, parse):
    """Sec. 3.3: alpha 4, lambda_adv 10 (cyc 1, mse 10), lr 1e-4, batch 16, 256 crops, 100 + 200 epochs;
    Table 2's learning-rate factors of the removal nets follow what was pre-trained."""
    strategy, weights, (f_s, f_r) = PAPER_ROWS[name]
    assert _header(name).startswith("# Setting: paper.")
    f = _flagfile(name)
    assert f["jrgr_schedule"] == strategy and f["lr"] == "1e-4" and f["batch_size"] == "16"
    assert f["crop_size"] == "256" and f["jrgr_alpha"] == "4" and f["jrgr_lambda_adv"] == "10"
    assert f["stage_epochs"] == ("200" if strategy == "init1" else "100,200")
    assert {k: f.get(k) for k in weights} == weights
    parse(f"--flagfile={FLAGFILES / name}")
    trainer = make_trainer(cli._record_from_flags())  # not built: no weights are made
    assert (trainer.lr_factors["f_s"], trainer.lr_factors["f_r"]) == (f_s, f_r)
    assert sorted(p.name for p in FLAGFILES.glob("*.flags")) == sorted([*PAPER_ROWS, "rain100h_code.flags"])
