"""--precision=bfloat16 (erl_derain.precision): the CPU-feature check and its refusal, and the
bfloat16 rebuild against the float32 network it copies."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from erl_derain import precision


def test_cpu_flags_read_x86_and_arm_lines(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu amx_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert precision.cpu_flags(str(x86)) == {"fpu", "sse2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert "bf16" in precision.cpu_flags(str(arm))
    assert precision.cpu_flags(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("flags, gpus, expected", [
    ({"avx512f", "avx2"}, [], "lacks AVX512_BF16 and AMX_BF16"),
    (None, [], "cannot be checked"),
    ({"avx512f", "avx512_bf16"}, [], None),
    ({"amx_bf16"}, [], None),
    ({"avx2"}, ["GPU:0"], None),
])
def test_bfloat16_unavailable(monkeypatch, flags, gpus, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(precision, "_gpus", lambda: gpus)
    reason = precision.bfloat16_unavailable()
    assert reason is None if expected is None else expected in reason


def test_derain_refuses_bfloat16_without_the_cpu_feature(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"fpu", "avx2"})
    monkeypatch.setattr(precision, "_gpus", lambda: [])
    photo = tmp_path / "p.png"
    import cv2

    assert cv2.imwrite(str(photo), np.full((8, 8, 3), 100, np.uint8))
    for verb in (["derain", f"--output_dir={tmp_path / 'out'}", str(photo)],
                 ["export", "--pretrained", f"--export_base={tmp_path / 'models' / 'm'}"]):
        code, out, err = run_cli(*verb, "--precision=bfloat16")
        assert code == 2, (code, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "--precision=bfloat16" in lines[0] and "AVX512_BF16" in lines[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "models").exists()


def test_bfloat16_twin_matches_the_float32_network():
    """The bundled ERL-Net (trained weights: an output that is not clipped flat): its bfloat16 rebuild
    computes in bfloat16 with the same float32 weights, and its de-rained image is within 0.01 mean
    absolute difference of float32's."""
    from erl_derain.inference import derain_image
    from erl_derain.pretrained import load_pretrained_trainer

    trainer, info = load_pretrained_trainer()
    record = info["record"]
    twin = precision.in_precision(trainer, record, "bfloat16")
    assert precision.in_precision(trainer, record, "float32") is trainer
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert twin.progress == trainer.progress
    for name, net16 in twin.networks().items():
        net32 = trainer.networks()[name]
        convs16 = [layer for layer in net16._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
        convs32 = [layer for layer in net32._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
        assert convs16 and {c.compute_dtype for c in convs16} == {"bfloat16"}, name
        assert {c.variable_dtype for c in convs16} == {c.compute_dtype for c in convs32} == {"float32"}, name
        for a, b in zip(net32.get_weights(), net16.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    yy, xx = np.mgrid[0:48, 0:40] / 48.0
    image = np.stack([0.5 + 0.3 * np.sin(5 * xx), 0.4 + 0.3 * yy, 0.3 + 0.2 * xx * yy], -1).astype(np.float32)
    out32 = derain_image(trainer.inference_model(), image, tile=0)
    out16 = derain_image(twin.inference_model(), image, tile=0)
    assert out16.dtype == np.float32 and out16.shape == image.shape
    inside = np.mean((out32 > 0.01) & (out32 < 0.99))
    assert inside > 0.9, inside  # not a clipped-flat output: the comparison means something
    diff = np.abs(out16 - out32)
    assert diff.mean() < 0.01 and diff.max() > 0, (diff.mean(), diff.max())



@pytest.mark.skipif(precision.bfloat16_unavailable() is not None, reason="this machine cannot run bfloat16")
def test_export_records_its_precision(run_cli, tmp_path):
    """``export --precision=bfloat16`` writes a SavedModel that computes in bfloat16 and says so in
    ``assets.extra/erl_derain.json`` and in its ``metadata`` signature; a float32 export says float32."""
    import json

    import tensorflow as tf

    rng = np.random.default_rng(0)
    image = rng.random((1, 40, 48, 3), dtype=np.float32) * 0.5 + 0.25
    outputs = {}
    for prec in ("float32", "bfloat16"):
        base = tmp_path / prec / "m"
        code, out, err = run_cli("export", "--pretrained=fast", f"--export_base={base}", f"--precision={prec}")
        assert code == 0, err
        info = json.loads((base / "1" / "assets.extra" / "erl_derain.json").read_text())
        assert info["precision"] == prec
        loaded = tf.saved_model.load(str(base / "1"))
        assert loaded.signatures["metadata"]()["precision"].numpy().decode() == prec
        graph = loaded.signatures["serving_default"].graph.as_graph_def()
        ops = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        casts = {n.attr["DstT"].type for n in ops if n.op == "Cast"}
        assert (tf.bfloat16.as_datatype_enum in casts) == (prec == "bfloat16"), casts
        outputs[prec] = loaded.signatures["serving_default"](images=tf.constant(image))["derained"].numpy()
    diff = np.abs(outputs["bfloat16"] - outputs["float32"])
    assert 0 < diff.mean() < 0.01, diff.mean()
