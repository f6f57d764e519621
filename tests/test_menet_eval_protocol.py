"""``--eval_protocol=ten_crop_rgb``: the MENET authors' scoring (SumiHui/MENET ``heavy/build_h5_dataset.py``
cuts every test image into ten 224x224 crops -- corners and centre of the image and of its left-right
mirror -- and ``heavy/validation.py`` averages ``tf.image.ssim`` / ``tf.image.psnr`` with ``max_val=255``
on RGB, unrounded, over the crops). Checked against scikit-image's SSIM / PSNR on crops cut by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from erl_derain import evaluation
from erl_derain.inference import InferenceModel

from .conftest import make_folder_dataset, run_settings


def hand_crops(image: np.ndarray, crop: int) -> list[np.ndarray]:
    """The ten crops cut by hand: for the image and then its mirror, top-left, top-right, bottom-left,
    bottom-right, centre (at Python's round((side - crop) / 2), as the authors' FiveCrop)."""
    out = []
    for source in (image, image[:, ::-1]):
        h, w = source.shape[:2]
        ct, cl = int(round((h - crop) / 2)), int(round((w - crop) / 2))
        out += [source[:crop, :crop], source[:crop, w - crop:], source[h - crop:, :crop], source[h - crop:, w - crop:],
                source[ct:ct + crop, cl:cl + crop]]
    return out


def skimage_scores(pred255: np.ndarray, target255: np.ndarray) -> tuple[float, float]:
    ssim = structural_similarity(target255, pred255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)
    return peak_signal_noise_ratio(target255, pred255, data_range=255), ssim


def pixelwise(x):
    """A stand-in network that works per pixel, so its output on a crop is the crop of its output."""
    return tf.clip_by_value(0.8 * x + 0.1 * tf.sin(7.0 * x) + 0.05, 0.0, 1.0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # 37x45 and 40x41 with 16 crops: centre margins 10.5 -> 10, 14.5 -> 14, 12 -> 12, 12.5 -> 12 (halves to even)
    out = []
    for h, w in ((37, 45), (40, 41)):
        yy, xx = np.mgrid[:h, :w]
        clean = np.stack([0.5 + 0.4 * np.sin(xx / 3.0), 0.5 + 0.4 * np.cos(yy / 4.0), (xx + yy) / (h + w)], -1)
        rainy = np.clip(clean + 0.6 * (rng.random((h, w, 1)) < 0.1), 0, 1)
        out.append((rainy.astype(np.float32), clean.astype(np.float32)))
    return out


def test_ten_crop_scores_equal_scikit_image_on_hand_cut_crops(images):
    dataset = [{"rainy": tf.constant(r[None]), "clean": tf.constant(c[None]), "name": tf.constant([f"im{i}"])}
               for i, (r, c) in enumerate(images)]
    rows = evaluation.evaluate_ten_crop(InferenceModel(pixelwise, 16), dataset, crop_size=16, progress=False)
    all_psnr, all_ssim, all_input_psnr = [], [], []
    for row, (rainy, clean) in zip(rows, images):
        out = pixelwise(tf.constant(rainy)).numpy()
        scores = [skimage_scores(o.astype(np.float64) * 255, c.astype(np.float64) * 255)
                  for o, c in zip(hand_crops(out, 16), hand_crops(clean, 16))]
        inputs = [skimage_scores(r.astype(np.float64) * 255, c.astype(np.float64) * 255)
                  for r, c in zip(hand_crops(rainy, 16), hand_crops(clean, 16))]
        assert row["crops"] == 10
        assert row["psnr_rgb"] == pytest.approx(np.mean([s[0] for s in scores]), abs=1e-6)
        assert row["ssim_rgb"] == pytest.approx(np.mean([s[1] for s in scores]), abs=1e-6)
        assert row["input_psnr_rgb"] == pytest.approx(np.mean([s[0] for s in inputs]), abs=1e-6)
        assert row["input_ssim_rgb"] == pytest.approx(np.mean([s[1] for s in inputs]), abs=1e-6)
        assert "psnr_y" not in row
        all_psnr += [s[0] for s in scores]
        all_ssim += [s[1] for s in scores]
        all_input_psnr += [s[0] for s in inputs]
        # the authors' own functions (float32) agree too
        o, c = np.stack(hand_crops(out, 16)) * 255, np.stack(hand_crops(clean, 16)) * 255
        assert row["ssim_rgb"] == pytest.approx(float(tf.reduce_mean(tf.image.ssim(c, o, max_val=255.0))), abs=2e-5)
        assert row["psnr_rgb"] == pytest.approx(float(tf.reduce_mean(tf.image.psnr(c, o, max_val=255.0))), abs=1e-3)
    summary = evaluation.summarize(rows)
    assert summary["num_images"] == 2 and summary["num_crops"] == 20
    assert summary["psnr_rgb"] == pytest.approx(np.mean(all_psnr), abs=1e-6)   # the mean over all 20 crops
    assert summary["ssim_rgb"] == pytest.approx(np.mean(all_ssim), abs=1e-6)
    assert summary["gain_psnr_rgb"] == pytest.approx(np.mean(all_psnr) - np.mean(all_input_psnr), abs=1e-6)
    assert "psnr_y" not in summary and "gain_psnr_y" not in summary
    with pytest.raises(ValueError, match="--eval_crop_size"):
        evaluation.evaluate_ten_crop(InferenceModel(pixelwise, 16), dataset, crop_size=38, progress=False)


def test_cli_evaluate_records_the_protocol_and_scores_menet_on_ten_crops(run_cli, tmp_path):
    from erl_derain.data.image_io import load_rgb
    from erl_derain.training import load_trainer

    data = make_folder_dataset(tmp_path / "data", n=2, size=(40, 45))
    model_dir = tmp_path / "run"
    code, _, err = run_cli("train", "--method=menet", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
                           "--menet_blocks=1", "--crop_size=32", "--batch_size=2", "--stage_steps=1",
                           "--menet_tasks=p,e,t", "--menet_task_weighting=gb", "--menet_texture_reduction=mean",
                           "--menet_value_range=255", "--menet_gb_arithmetic=stable", "--jit_compile=false",
                           "--noevaluate_after")
    assert code == 0, err
    config = run_settings(model_dir)
    assert config["menet_value_range"] == 255.0 and config["menet_gb_arithmetic"] == "stable"
    out = tmp_path / "ev"
    code, stdout, err = run_cli("evaluate", f"--model_dir={model_dir}", f"--dataset=folder:{data}", f"--output={out}",
                                "--eval_protocol=ten_crop_rgb", "--eval_crop_size=32", "--jit_compile=false")
    assert code == 0, err
    assert "Mean over 20 crops of 2 images" in stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["eval_protocol"] == "ten_crop_rgb" and summary["eval_crop_size"] == 32
    assert summary["num_crops"] == 20 and "psnr_y" not in summary
    assert json.loads((model_dir / "metrics.json").read_text())["eval_protocol"] == "ten_crop_rgb"
    trainer, _ = load_trainer(str(model_dir))
    model = trainer.inference_model()
    for row in csv.DictReader(open(out / "per_image.csv")):
        rainy = load_rgb(str(data / "rainy" / f"{row['name']}.png"))
        clean = load_rgb(str(data / "clean" / f"{row['name']}.png"))
        outputs = model(tf.constant(np.stack(hand_crops(rainy, 32)), tf.float32)).numpy()  # BN moving averages
        scores = [skimage_scores(o.astype(np.float64) * 255, c.astype(np.float64) * 255)
                  for o, c in zip(outputs, hand_crops(clean, 32))]
        inputs = [skimage_scores(r.astype(np.float64) * 255, c.astype(np.float64) * 255)
                  for r, c in zip(hand_crops(rainy, 32), hand_crops(clean, 32))]
        assert float(row["psnr_rgb"]) == pytest.approx(np.mean([s[0] for s in scores]), abs=1e-4)
        assert float(row["ssim_rgb"]) == pytest.approx(np.mean([s[1] for s in scores]), abs=1e-5)
        assert float(row["input_psnr_rgb"]) == pytest.approx(np.mean([s[0] for s in inputs]), abs=1e-6)
        assert float(row["input_ssim_rgb"]) == pytest.approx(np.mean([s[1] for s in inputs]), abs=1e-6)
    # the default protocol is recorded too; compare refuses the crop protocol
    code, _, err = run_cli("evaluate", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
                           f"--output={tmp_path / 'ev_full'}", "--jit_compile=false")
    assert code == 0, err
    full = json.loads((tmp_path / "ev_full" / "metrics.json").read_text())
    assert full["eval_protocol"] == "full_y" and "eval_crop_size" not in full and "psnr_y" in full
    code, _, err = run_cli("compare", f"--baseline={model_dir}", f"--candidate={model_dir}",
                           f"--dataset=folder:{data}", "--eval_protocol=ten_crop_rgb")
    assert code == 2 and "--eval_protocol" in err
