"""JRGR: both closed loops, image pool, stages/strategies, per-network learning rates, checkpointing, and
the unpaired real-rain pipeline (tiny networks, 32x32 crops). The networks, losses and one training step
against the authors' code's numbers: test_jrgr_reference.py; the code's training options: test_jrgr_options.py."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from erl_derain.data import unpaired
from erl_derain.data.pipelines import DatasetError, paired_dataset
from erl_derain.methods import jrgr

from .conftest import make_folder_dataset, write_png, run_settings

S = 32  # crop side
TINY = dict(unet_depth=3, unet_filters=4, resnet_blocks=1, gen_filters=4, disc_filters=4, disc_layers=2,
            crop_size=S, pool_size=4)


def _trainer(**kw):
    t = jrgr.JRGRTrainer(**{**TINY, **kw})
    t.build_networks((2, S, S, 3))
    return t


def _batch(seed=0, n=2):
    rng = np.random.default_rng(seed)
    clean = rng.random((n, S, S, 3)).astype(np.float32) * 0.8
    rainy = np.clip(clean + 0.4 * (rng.random((n, S, S, 3)) > 0.9), 0, 1).astype(np.float32)
    real = np.clip(rng.random((n, S, S, 3)) * 0.7 + 0.3 * (rng.random((n, S, S, 1)) > 0.85), 0, 1)
    return {"rainy": tf.constant(rainy), "clean": tf.constant(clean), "real": tf.constant(real, tf.float32)}


def _snapshot(net):
    return [v.numpy().copy() for v in net.weights]


def _changed(before, net):
    return any(np.abs(a - b.numpy()).max() > 0 for a, b in zip(before, net.weights))


def test_every_intermediate_of_both_loops_has_the_image_shape():
    t = _trainer()
    b = _batch()
    out = t.intermediates(b["rainy"], b["real"])
    expected = {"o_s", "b_s", "r_s", "r_s2r", "o_s2r", "b_s2r", "r_s2r_dis", "r_s2r2s", "o_s_rec",
                "o_r", "b_r", "r_r", "r_r2s", "o_r2s", "b_r2s", "r_r2s_dis", "r_r2s2r", "o_r_rec"}
    assert set(out) == expected
    for k, v in out.items():
        assert v.shape == (2, S, S, 3), k
    # disentanglement / entanglement identities
    np.testing.assert_allclose(out["r_s"], out["o_s"] - out["b_s"], atol=1e-6)
    np.testing.assert_allclose(out["o_s2r"], out["b_s"] + out["r_s2r"], atol=1e-6)
    np.testing.assert_allclose(out["o_r_rec"], out["b_r2s"] + out["r_r2s2r"], atol=1e-6)
    for k in ("b_s", "b_s2r", "b_r", "b_r2s"):
        assert 0.0 <= float(tf.reduce_min(out[k])) and float(tf.reduce_max(out[k])) <= 1.0
    for k in ("r_s2r", "r_s2r2s", "r_r2s", "r_r2s2r"):
        assert float(tf.reduce_max(tf.abs(out[k]))) <= 0.5
    assert t.d_b(out["b_s"]).shape == (2, 6, 6, 1)  # n_layers=2: 32 -> 16 -> 8 -> 7 -> 6
    assert t.pad_multiple == 8


def test_default_patchgan_gives_30x30_scores_at_256():
    d = jrgr.PatchDiscriminator(3, 4)
    assert d(tf.zeros((1, 256, 256, 3))).shape == (1, 30, 30, 1)


def test_pool_returns_stored_images_half_of_the_time_once_full():
    pool = jrgr.ImagePool(5, (2, 2, 1), seed=3, stream=1)
    query = tf.function(pool.query)
    returned_stored, n = 0, 600
    for step in range(n + 5):
        image = tf.fill((1, 2, 2, 1), float(step))
        out = float(query(image, tf.constant(step, tf.int64))[0, 0, 0, 0])
        if step < 5:
            assert out == step  # filling: the input itself
        else:
            assert out <= step
            returned_stored += out != step
    assert abs(returned_stored / n - 0.5) < 0.07
    assert int(pool.count) == 5
    # seeded: a second pool with the same seed/stream makes the same choices
    runs = []
    for _ in range(2):
        again = jrgr.ImagePool(5, (2, 2, 1), seed=3, stream=1)
        runs.append([float(again.query(tf.fill((1, 2, 2, 1), float(s)), s)[0, 0, 0, 0]) for s in range(30)])
    assert runs[0] == runs[1] and runs[0] != list(range(30))


def test_pretrain_of_init2_trains_f_s_only_then_joint_trains_everything_with_the_codes_learning_rates():
    t = _trainer(strategy="init2", learning_rate=1e-3)
    assert [s.name for s in t.stages] == ["pretrain", "joint"]
    b = _batch(2)
    before = {k: _snapshot(n) for k, n in t.networks().items()}
    t.set_stage(0)
    logs = tf.function(t.train_step)(b)
    assert set(logs) == {"loss", "mse_f_s"}
    assert _changed(before["f_s"], t.f_s)
    for k in ("f_r", "g_r", "g_s", "d_b", "d_os", "d_or"):
        assert not _changed(before[k], t.networks()[k]), k  # incl. F_r's BN moving statistics
    assert t.current_optimizer is t.optimizers_by_name["pretrain"]

    t.set_stage(1)
    assert t.current_optimizer is t.optimizers_by_name["gen"]
    before = {k: _snapshot(n) for k, n in t.networks().items()}
    joint = tf.function(t.train_step)
    logs = {k: float(v) for k, v in joint(b).items()}
    assert set(jrgr.GENERATOR_TERMS + jrgr.DISCRIMINATOR_TERMS + ("loss",)) == set(logs)
    for k, net in t.networks().items():
        assert _changed(before[k], net), k
    lr = {k: float(o.learning_rate) for k, o in t.optimizers_by_name.items()}
    # init2 pre-trains F_s only: F_s at lr/100, F_r (not pre-trained) at the base rate (the code's rule)
    assert lr["gen"] == pytest.approx(1e-3) and lr["f_r"] == pytest.approx(1e-3) and lr["f_s"] == pytest.approx(1e-5)
    assert lr["d_b"] == lr["d_os"] == lr["d_or"] == pytest.approx(1e-3)
    assert all(float(o.beta_1) == 0.5 for o in t.optimizers_by_name.values())
    # a decay of the generation nets' lr (what the training loop does) carries over with the ratios
    t.current_optimizer.learning_rate.assign(1e-4)
    joint(b)
    assert float(t.optimizers_by_name["f_s"].learning_rate) == pytest.approx(1e-6)
    assert int(t.step_counter) == 2


def test_strategies_stages():
    assert [s.train for s in jrgr.stages_for("proposed")][0] == ("f_s",)  # shared: one U-Net, copied into F_r
    assert [s.train for s in jrgr.stages_for("proposed", "separate")][0] == ("f_s", "f_r")
    assert [s.train for s in jrgr.stages_for("init2", "separate")][0] == ("f_s",)
    assert [s.name for s in jrgr.stages_for("init1")] == ["joint"]
    with pytest.raises(ValueError, match="jrgr_schedule"):
        jrgr.stages_for("init3")
    with pytest.raises(ValueError, match="--jrgr_pretrain must be one of shared, separate, got 'both'"):
        jrgr.stages_for("proposed", "both")


@pytest.mark.parametrize("strategy,pretrain,f_s,f_r", [
    ("init1", "shared", 1.0, 1.0), ("init2", "shared", 0.01, 1.0),
    ("proposed", "shared", 0.01, 0.1), ("proposed", "separate", 0.01, 0.1)])
def test_learning_rate_cut_only_for_pretrained_removal_nets(strategy, pretrain, f_s, f_r):
    """Table 2 / the code's optimizer groups: F_s at lr/100 only when pre-trained, F_r at lr/10 only when
    pre-trained (its own pre-training or the shared copy); init1 trains everything at the base rate."""
    t = jrgr.JRGRTrainer(**{**TINY, "strategy": strategy, "pretrain": pretrain, "learning_rate": 2e-4})
    assert t.lr_factors["f_s"] == f_s and t.lr_factors["f_r"] == f_r
    lr = {k: float(o.learning_rate) for k, o in t.optimizers_by_name.items()}
    assert lr["f_s"] == pytest.approx(2e-4 * f_s) and lr["f_r"] == pytest.approx(2e-4 * f_r)
    assert lr["gen"] == lr["d_b"] == lr["d_os"] == lr["d_or"] == pytest.approx(2e-4)
    # explicit factors still win
    t = jrgr.JRGRTrainer(**{**TINY, "strategy": strategy, "fs_lr_factor": 0.5, "fr_lr_factor": 0.25})
    assert (t.lr_factors["f_s"], t.lr_factors["f_r"]) == (0.5, 0.25)
    with pytest.raises(ValueError, match="--jrgr_fr_lr_factor"):
        jrgr.JRGRTrainer(**{**TINY, "strategy": strategy, "fr_lr_factor": 0.0})


def test_shared_pretraining_copies_f_s_into_f_r_when_the_joint_stage_starts():
    """The code pre-trains ONE U-Net (unetderain) and loads it into both F_s and F_r (init_derain 1,3):
    'shared' trains F_s alone, then entering the joint stage copies it, BatchNorm statistics included,
    into F_r; a resumed joint stage (jrgr_step > 0) keeps its F_r. 'separate' trains both, no copy."""
    t = _trainer(strategy="proposed", pretrain="shared")
    b = _batch(6)
    f_r_before = _snapshot(t.f_r)
    t.set_stage(0)
    logs = t.train_step(b)
    assert set(logs) == {"loss", "mse_f_s"}
    assert not _changed(f_r_before, t.f_r)
    t.set_stage(1)
    for a, c in zip(t.f_r.weights, t.f_s.weights):
        np.testing.assert_array_equal(a.numpy(), c.numpy(), err_msg=a.path)
    assert any("moving_variance" in v.path for v in t.f_r.weights)
    t.train_step(b)  # the joint step moves F_r and F_s apart (different learning rates)
    f_r_trained = _snapshot(t.f_r)
    t.set_stage(1)  # as a resumed run does: no second copy
    assert not _changed(f_r_trained, t.f_r)

    t = _trainer(strategy="proposed", pretrain="separate")
    t.set_stage(0)
    assert set(t.train_step(b)) == {"loss", "mse_f_s", "mse_f_r"}
    t.set_stage(1)
    assert any(not np.array_equal(a.numpy(), c.numpy()) for a, c in zip(t.f_r.weights, t.f_s.weights))


def test_d_b_real_term_is_four_single_background_draws_from_the_clean_pool():
    """The code: Pool_real_B.query(B_s) stores the batch, query(return_num=4) draws four times ONE stored
    image (random.randint(0, num_imgs - 1)), each (real_k, fake_k) pair is halved and summed. With a
    constant discriminator c the loss is worked by hand: 0.5 * (alpha / 4 * 4 (c - 1)^2 + 4 c^2)."""
    t = _trainer(strategy="init1", pool_size=6, alpha=2.0)
    pool = t.pools["clean"]
    images = tf.reshape(tf.range(2, dtype=tf.float32), (2, 1, 1, 1)) * tf.ones((2, S, S, 3))
    query, sample = tf.function(pool.query), tf.function(pool.sample)
    query(images, tf.constant(0, tf.int64))
    draws = sample(4, tf.constant(0, tf.int64)).numpy()
    assert draws.shape == (4, S, S, 3)
    assert set(np.unique(draws)) <= {0.0, 1.0} and all(len(np.unique(d)) == 1 for d in draws)  # whole images
    # stateless: the same step gives the same draws
    np.testing.assert_array_equal(draws, sample(4, tf.constant(0, tf.int64)).numpy())
    for step in (1, 2):  # fill the pool with the values 0..5 (3 batches of 2)
        query(images + 2.0 * step, tf.constant(step, tf.int64))
    assert int(pool.count) == 6
    counts = np.zeros(6)
    for step in range(300):
        counts += np.bincount(sample(4, tf.constant(step, tf.int64)).numpy()[:, 0, 0, 0].astype(int), minlength=6)
    assert counts.sum() == 1200 and counts.min() > 150 and counts.max() < 250  # uniform over the 6 stored images
    out = t.intermediates(_batch(7)["rainy"], _batch(7)["real"])
    fakes = t.pooled_fakes(out, _batch(7)["clean"], tf.constant(5, tf.int64))
    assert fakes["clean"].shape == (4, S, S, 3)
    # a discriminator that outputs c everywhere: kernels 0, output bias c
    c = 0.25
    for v in t.d_b.weights:
        v.assign(tf.zeros_like(v))
    t.d_b.out_conv.bias.assign([c])
    d_b = float(t.discriminator_losses(_batch(7)["rainy"], _batch(7)["real"], fakes)["d_b"])
    assert d_b == pytest.approx(0.5 * (2.0 / 4 * 4 * (c - 1) ** 2 + 4 * c ** 2), rel=1e-6)


def test_pools_keep_non_finite_images_out_and_a_skipped_step_can_be_undone():
    """--on_nan=skip_batch: the training loop restores checkpoint_items and step_state_variables; JRGR's
    step_state_variables are its pools, so an undone joint step leaves pools, jrgr_step and weights as
    they were. A pool never stores a non-finite image either."""
    from erl_derain import training

    pool = jrgr.ImagePool(3, (2, 2, 1), seed=1)
    bad = tf.fill((2, 2, 2, 1), float("nan"))
    out = pool.query(bad, 0)
    assert np.isnan(out.numpy()).all() and int(pool.count) == 0
    pool.query(tf.ones((2, 2, 2, 1)), 1)
    assert int(pool.count) == 2 and np.isfinite(pool.images.numpy()).all()

    t = _trainer(strategy="init1")
    step = t.train_step  # eagerly (the graph path: test_pretrain_of_init2_...)
    step(_batch(8))
    assert set(v.ref() for v in t.step_state_variables()) == {
        v.ref() for p in t.pools.values() for v in (p.images, p.count)}
    backup = training.StateBackup(t)
    backup.save()
    before = {k: _snapshot(n) for k, n in t.networks().items()}
    pools_before = [v.numpy().copy() for v in t.step_state_variables()]
    step(_batch(9))
    assert int(t.step_counter) == 2
    backup.restore()
    assert int(t.step_counter) == 1
    for k, net in t.networks().items():
        assert not _changed(before[k], net), k
    for a, v in zip(pools_before, t.step_state_variables()):
        np.testing.assert_array_equal(a, v.numpy())


def test_generator_update_leaves_the_discriminators_and_discriminator_update_the_generators():
    """The code's optimize_parameters: backward_G + optimizer_G.step (D_* frozen), then each D on the
    detached fakes of the same forward pass (F_*, G_* not run, BatchNorm statistics untouched)."""
    t = _trainer(strategy="init1")
    b = _batch(10)
    gens, discs = ("f_s", "f_r", "g_r", "g_s"), ("d_b", "d_os", "d_or")
    before = {k: _snapshot(n) for k, n in t.networks().items()}
    out, logs = t.generator_step(b)
    assert set(logs) == set(jrgr.GENERATOR_TERMS) | {"loss"}
    for k in gens:
        assert _changed(before[k], t.networks()[k]), k
    for k in discs:
        assert not _changed(before[k], t.networks()[k]), k
        assert int(t.optimizers_by_name[k].iterations) == 0
    before = {k: _snapshot(n) for k, n in t.networks().items()}
    fakes = t.pooled_fakes(out, b["clean"], t.step_counter)
    d_logs = t.discriminator_step(b["rainy"], b["real"], fakes)
    assert set(d_logs) == set(jrgr.DISCRIMINATOR_TERMS)
    for k in gens:
        assert not _changed(before[k], t.networks()[k]), k  # weights and BatchNorm statistics
    for k in discs:
        assert _changed(before[k], t.networks()[k]), k


@pytest.mark.parametrize("kw,frozen", [(dict(lambda_adv=0.0), ("d_b", "d_os", "d_or")),
                                        (dict(lambda_adv_b=0.0), ("d_b",))])
def test_zero_adversarial_weight_leaves_discriminators_alone(kw, frozen):
    t = _trainer(strategy="init1", **kw)
    before = {k: _snapshot(n) for k, n in t.networks().items()}
    logs = tf.function(t.train_step)(_batch(3))
    for k, net in t.networks().items():
        assert _changed(before[k], net) == (k not in frozen), k
        if k in frozen:
            assert int(t.optimizers_by_name[k].iterations) == 0
            assert k not in logs
    if "d_b" in frozen:
        assert float(logs["adv_b"]) == 0.0


def test_checkpoint_round_trip_and_inference_model(tmp_path):
    from erl_derain import training

    t = _trainer(strategy="init1")
    t.train_step(_batch(4))  # eagerly: the step works outside tf.function too
    run = training.Run(str(tmp_path), t)
    run.save()
    x = _batch(5)["real"]
    expected = t.inference_model()(x).numpy()
    t2 = _trainer(strategy="init1")
    assert training.Run(str(tmp_path), t2).restore() is not None
    np.testing.assert_allclose(t2.inference_model()(x).numpy(), expected, atol=1e-6)
    assert int(t2.step_counter) == 1
    assert float(tf.reduce_min(expected)) >= 0 and float(tf.reduce_max(expected)) <= 1
    g = jrgr.generate_rain(t2, x, x - 0.5 * x)
    assert g.shape == x.shape
    assert jrgr.synthetic_to_real(t2, x).shape == jrgr.real_to_synthetic(t2, x).shape == x.shape


# -- unpaired real-rain pipeline ---------------------------------------------------------------------


def _photo_folder(root, sizes=((40, 48), (36, 36), (50, 44), (20, 30), (64, 40))):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        write_png(root / f"photo{i}.png", rng.random((h, w, 3)))
    return root


def _take(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_unpaired_folder_is_deterministic_and_resumes(tmp_path):
    folder = _photo_folder(tmp_path / "real")
    make = lambda start: unpaired.unpaired_dataset(f"folder:{folder}", batch_size=2, crop_size=S,  # noqa: E731
                                                   seed=7, start_index=start)
    a, b = _take(make(0), 6), _take(make(0), 6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["rainy"], y["rainy"])
        assert list(x["name"]) == list(y["name"])
    assert a[0]["rainy"].shape == (2, S, S, 3)
    resumed = _take(make(6), 3)  # positions 6.. = batches 3..5 of the uninterrupted stream
    for x, y in zip(resumed, a[3:]):
        np.testing.assert_array_equal(x["rainy"], y["rainy"])
    names = {n for batch in a for n in batch["name"]}
    assert b"photo3" in names  # the 20x30 photo is upscaled to the crop, not dropped
    # a plain directory path works too, and zipped() adds 'real'
    paired = paired_dataset(f"folder:{make_folder_dataset(tmp_path / 'syn', size=(40, 40))}", batch_size=2,
                            crop_size=S, seed=7)
    z = next(iter(unpaired.zipped(paired, unpaired.unpaired_dataset(str(folder), batch_size=2, crop_size=S))))
    assert {"rainy", "clean", "real", "name", "real_name"} <= set(z)
    assert z["real"].shape == (2, S, S, 3)


def test_unpaired_errors_name_the_file(tmp_path):
    folder = _photo_folder(tmp_path / "real")
    with pytest.raises(DatasetError, match="photo3.png is 30x20"):
        unpaired.unpaired_dataset(f"folder:{folder}", crop_size=S, small_images="error")
    (folder / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.jpg"):
        unpaired.unpaired_dataset(f"folder:{folder}", crop_size=S)
    with pytest.raises(DatasetError, match="no images"):
        (tmp_path / "empty").mkdir()
        unpaired.unpaired_dataset(f"folder:{tmp_path / 'empty'}", crop_size=S)
    with pytest.raises(DatasetError, match="does not exist"):
        unpaired.unpaired_dataset(f"folder:{tmp_path / 'missing'}", crop_size=S)


def test_unpaired_tfds_real_rain_resumes(tmp_path):
    from pathlib import Path

    manual = Path(__file__).resolve().parents[1] / "tfds_builders" / "real_rain" / "dummy_data"
    make = lambda start: unpaired.unpaired_dataset("real_rain", batch_size=2, crop_size=S, seed=1,  # noqa: E731
                                                   start_index=start, data_dir=str(tmp_path), manual_dir=str(manual))
    full = _take(make(0), 4)
    resumed = _take(make(4), 2)
    for x, y in zip(resumed, full[2:]):
        np.testing.assert_array_equal(x["rainy"], y["rainy"])
        assert list(x["name"]) == list(y["name"])
    assert full[0]["rainy"].shape == (2, S, S, 3)


def test_cli_trains_both_stages_then_derains_exports_and_generates(run_cli, tmp_path):
    """`erl-derain train --method=jrgr` with synthetic pairs and a folder of real photos: the pretrain
    and joint stages run from one command; derain uses F_r; generate writes realistic rainy images."""
    import json

    import cv2

    from .conftest import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 32))
    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        cv2.imwrite(str(real / f"r{i}.jpg"), (rng.random((20 + 4 * i, 30, 3)) * 255).astype(np.uint8))
    model_dir = tmp_path / "run"
    tiny = ["--jrgr_unet_depth=2", "--jrgr_unet_filters=4", "--jrgr_resnet_blocks=1", "--jrgr_gen_filters=4", "--jrgr_disc_filters=4",
            "--jrgr_disc_layers=1", "--jrgr_pool_size=2"]
    code, out, err = run_cli("train", "--method=jrgr", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
                             f"--jrgr_real_dataset=folder:{real}", "--crop_size=16", "--batch_size=1",
                             "--stage_steps=1,2", "--jit_compile=false", "--noevaluate_after", *tiny)
    assert code == 0, err
    assert "steps 0->1" in out and "steps 0->2" in out and "adv_b" in out
    assert run_settings(model_dir)["lr"] == pytest.approx(1e-4)
    photo = tmp_path / "odd.png"
    cv2.imwrite(str(photo), (rng.random((13, 19, 3)) * 255).astype(np.uint8))
    code, _, err = run_cli("derain", f"--model_dir={model_dir}", f"--output_dir={tmp_path / 'out'}", str(photo))
    assert code == 0, err
    assert cv2.imread(str(tmp_path / "out" / "odd.png")).shape == (13, 19, 3)
    code, _, err = run_cli("export", f"--model_dir={model_dir}", f"--export_base={tmp_path / 'exp' / 'jrgr'}")
    assert code == 0, err
    for mode in (f"--input_dir={data / 'rainy'}", f"--clean_dir={data / 'clean'}"):
        out_dir = tmp_path / ("gen_" + mode[2:7])
        code, _, err = run_cli("generate", f"--model_dir={model_dir}", f"--output_dir={out_dir}", mode)
        assert code == 0, err
        assert sorted(p.name for p in out_dir.iterdir()) == ["img0.png", "img1.png"]
        assert cv2.imread(str(out_dir / "img0.png")).shape == (24, 32, 3)
    code, _, err = run_cli("train", "--method=jrgr", f"--model_dir={tmp_path / 'r2'}", f"--dataset=folder:{data}",
                           "--crop_size=16", "--stage_steps=1,1", *tiny)
    assert code == 2 and "--jrgr_real_dataset" in err
