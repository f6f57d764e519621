"""ERL-Net: the stage runner of Table 1, the entanglement taps of Fig. 2, and the MEMD variants."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain.methods import erlnet, make_trainer

TINY = {"widths": [8, 16], "bottleneck_width": 16, "dense_layers": 2, "growth": 8, "se_ratio": 2}


def tiny_trainer(strategy="ma_d", **kw):
    # Seeded: at these tiny widths a squeeze-excitation block has 1-4 ReLU units, and an unlucky
    # initialisation can leave them all dead for a batch (their weights then get no gradient).
    keras.utils.set_random_seed(0)
    method = "memd" if strategy == "memd" else "erlnet"
    t = make_trainer({"method": method, "erl_strategy": strategy, **TINY, **kw})
    t.build_networks((1, 16, 16, 3))
    return t


def snapshot(trainer):
    return {name: [v.numpy().copy() for v in net.weights] for name, net in trainer.sub_networks().items()}


# Table 1 of the paper, written out independently of erlnet.STRATEGIES: the branches each stage trains.
TABLE_1 = {
    "ma_a": [{"men", "mde", "ae"}, {"ren"}],
    "ma_b": [{"men", "mde", "ae"}, {"ren", "mde"}],
    "ma_c": [{"men", "mde", "ae"}, {"ren"}, {"mde"}],
    "ma_d": [{"men", "mde", "ae"}, {"ren"}, {"ren", "mde"}],
    "dt": [{"ae"}, {"men", "ren", "mde"}],
    "memd": [{"men", "mde"}],
}
# Which stages use L_ERL (L_pre + 0.01 L_fre) for the de-raining branch.
TABLE_1_ERL = {"ma_a": [False, True], "ma_b": [False, True], "ma_c": [False, True, False],
               "ma_d": [False, True, False], "dt": [None, True], "memd": [False]}


@pytest.mark.parametrize("strategy", sorted(TABLE_1))
def test_stage_runner_freezes_and_trains_as_table_1(strategy):
    trainer = tiny_trainer(strategy)
    rng = np.random.default_rng(0)
    batch = {"rainy": tf.constant(rng.random((2, 16, 16, 3), np.float32)),
             "clean": tf.constant(rng.random((2, 16, 16, 3), np.float32))}
    assert len(trainer.stages) == len(TABLE_1[strategy])
    for i, expected in enumerate(TABLE_1[strategy]):
        trainer.set_stage(i)
        before = snapshot(trainer)
        step = tf.function(trainer.train_step)
        logs = step(batch)
        after = snapshot(trainer)
        for name in before:
            changed = [not np.array_equal(a, b) for a, b in zip(before[name], after[name])]
            if name in expected:
                assert all(changed), f"{strategy} stage {i}: every weight of {name} should train"
            else:
                assert not any(changed), f"{strategy} stage {i}: {name} must stay bit-identical"
        uses_fre = TABLE_1_ERL[strategy][i]
        if uses_fre is not None:
            assert ("l_fre" in logs) == uses_fre
            if uses_fre:  # L_ERL = L_pre + 0.01 L_fre
                np.testing.assert_allclose(float(logs["loss"]), float(logs["l_pre"]) + 0.01 * float(logs["l_fre"]),
                                           rtol=1e-5)


@pytest.mark.parametrize("entanglement,levels", [("mlgd", [0, 1, 2]), ("clgd", [2])])
def test_entanglement_taps(entanglement, levels):
    cfg = erlnet.ERLNetConfig(widths=(8, 16), bottleneck_width=16, dense_layers=2, growth=8, entanglement=entanglement)
    net = erlnet.ERLNet(cfg)
    x = tf.random.uniform((1, 16, 16, 3), seed=1)
    net(x)
    main, residual, _, entangled = net.encode(x)
    assert len(main) == 3  # two skip levels + the bottleneck
    assert [t.shape[1] for t in main] == [16, 8, 4]
    for i in range(3):
        m, r, e = main[i].numpy(), residual[i].numpy(), entangled[i].numpy()
        assert np.abs(r).max() > 0
        if i in levels:
            np.testing.assert_allclose(e, m + r, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(e, m)
    # The decoder reads the entangled taps: REN changes the output; without REN it is plain MEMD.
    np.testing.assert_allclose(net(x).numpy(), net.mde(entangled).numpy(), atol=1e-6)
    assert not np.allclose(net(x).numpy(), net(x, use_ren=False).numpy())
    np.testing.assert_allclose(net(x, use_ren=False).numpy(), net.mde(main).numpy(), atol=1e-6)


def test_l_fre_uses_clean_autoencoder_features():
    trainer = tiny_trainer("ma_a", entanglement="clgd")
    trainer.set_stage(1)
    rng = np.random.default_rng(1)
    rainy = tf.constant(rng.random((1, 16, 16, 3), np.float32))
    clean = tf.constant(rng.random((1, 16, 16, 3), np.float32))
    losses = trainer.compute_losses(rainy, clean)
    main, residual, _, _ = trainer.net.encode(rainy)
    target = trainer.clean_ae.men(clean)[-1]
    expected = np.mean(np.abs(main[-1].numpy() + residual[-1].numpy() - target.numpy()))
    np.testing.assert_allclose(float(losses["l_fre"]), expected, rtol=1e-5)
    out = trainer.net(rainy)
    np.testing.assert_allclose(float(losses["l_pre"]), np.mean(np.abs(out.numpy() - clean.numpy())), rtol=1e-5)


def test_memd_variants_structure():
    x = tf.random.uniform((1, 16, 16, 3), seed=2)
    params = {}
    for base in ("memd", "memd-", "memd--"):
        cfg = erlnet.ERLNetConfig(widths=(8, 16), bottleneck_width=16, dense_layers=2, growth=8, base=base,
                                  entanglement="none")
        m = erlnet.MEMD(cfg)
        assert m(x).shape == (1, 16, 16, 3)
        assert bool(m.mde.fus) == (base == "memd")
        # Channels entering the first conv of the finest decoder dense block: the up-sampled feature
        # (8) plus the skip (8) when concatenated without FUS; FUS projects the concatenation to 8.
        params[base] = m.mde.blocks[0].convs[0].kernel.shape[2]
    assert params == {"memd": 8, "memd-": 16, "memd--": 8}


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="--erl_schedule"):
        make_trainer({"method": "erlnet", "erl_strategy": "ma_z", **TINY})
    with pytest.raises(ValueError, match="--erl_base"):
        make_trainer({"method": "erlnet", "base": "unet", **TINY})
    with pytest.raises(ValueError, match="unknown --method"):
        make_trainer({"method": "nope"})
