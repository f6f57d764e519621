"""`erl-derain evaluate` against the community's reference values, `compare` (ERL-Net's dissection)
and the cross-dataset table, end to end on tiny networks."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import TINY_FLAGS, make_folder_dataset, shared_data_dir

# "rainy input vs clean" reference values of shared/data/README.md:
# image -> (rounded Y-PSNR, rounded Y-SSIM, unrounded Y-PSNR, unrounded Y-SSIM)
REFERENCE = {
    "jorder_e_small": {"norain-1": (20.2456, 0.50833, 20.2419, 0.50837),
                       "norain-2": (12.1808, 0.44680, 12.1811, 0.44688),
                       "norain-3": (13.9642, 0.24867, 13.9643, 0.24881),
                       "norain-4": (12.0426, 0.27908, 12.0427, 0.27918),
                       "norain-5": (10.8179, 0.28127, 10.8177, 0.28132)},
    "rain13k_layout_sample": {"1": (17.5469, 0.57606, 17.5473, 0.57619), "2": (22.5619, 0.69438, 22.5633, 0.69512),
                              "3": (25.5066, 0.88873, 25.5098, 0.88935)},
    "sirr_val20": {"1": (16.6860, 0.82676, 16.6865, 0.82737), "5": (24.5915, 0.91609, 24.5945, 0.91674),
                   "13": (31.9386, 0.94126, 31.9493, 0.94150), "20": (25.5039, 0.86585, 25.4951, 0.86643)},
}
REFERENCE_MEANS = {"jorder_e_small": (13.8502, 0.35283, 13.8495, 0.35291),
                   "rain13k_layout_sample": (21.8718, 0.71972, 21.8735, 0.72022),
                   "sirr_val20": (22.2923, 0.87199, 22.2942, 0.87260)}


def _link_pairs(shared: Path, folder: str, dest: Path) -> Path:
    """rainy/ and clean/ symlinks (never copies) to one shared/data folder, named as its README table."""
    src = shared / folder
    if folder == "jorder_e_small":
        pairs = [(p, src / "norain" / p.name, p.stem) for p in (src / "rain").glob("norain-*.png")]
    elif folder == "rain13k_layout_sample":
        pairs = [(p, src / "target" / p.name, p.stem) for p in (src / "input").glob("*.png")]
    else:
        pairs = [(p, src / "label_val" / f"norain{p.stem[5:]}.png", p.stem[5:])
                 for p in (src / "input_val").glob("input*.png")]
    for sub in ("rainy", "clean"):
        (dest / sub).mkdir(parents=True)
    for rainy, clean, name in pairs:
        assert clean.exists(), clean
        (dest / "rainy" / f"{name}.png").symlink_to(rainy)
        (dest / "clean" / f"{name}.png").symlink_to(clean)
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny MEMD runs trained one step from different seeds, on a synthetic folder dataset."""
    from absl import flags

    from erl_derain import cli

    root = tmp_path_factory.mktemp("runs")
    data = make_folder_dataset(root / "data", n=4, size=(32, 40))
    dirs = {}
    for name, seed in (("baseline", 1), ("candidate", 2)):
        flags.FLAGS.unparse_flags()
        argv = flags.FLAGS(["erl-derain", "train", f"--model_dir={root / name}", f"--dataset=folder:{data}",
                            "--method=memd", "--stage_steps=2", "--crop_size=16", "--batch_size=2", f"--seed={seed}",
                            "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS])
        assert cli.main(argv) in (0, None)
        dirs[name] = root / name
    flags.FLAGS.unparse_flags()
    dirs["data"] = data
    return dirs


@pytest.mark.parametrize("rounding,col", [("rounded", 0), ("unrounded", 2)])
def test_evaluate_input_metrics_match_shared_reference_values(run_cli, runs, tmp_path, rounding, col):
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    for folder, expected in REFERENCE.items():
        data = _link_pairs(shared, folder, tmp_path / folder)
        out = tmp_path / f"ev_{folder}"
        code, _, err = run_cli("evaluate", f"--model_dir={runs['baseline']}", f"--dataset=folder:{data}",
                               f"--output={out}", f"--y_rounding={rounding}")
        assert code == 0, err
        rows = {r["name"]: r for r in csv.DictReader(open(out / "per_image.csv"))}
        for name, ref in expected.items():
            assert float(rows[name]["input_psnr_y"]) == pytest.approx(ref[col], abs=0.01), (folder, name)
            assert float(rows[name]["input_ssim_y"]) == pytest.approx(ref[col + 1], abs=0.0005), (folder, name)
            # evaluated at full size (no crop to the training patch)
            with Image.open(data / "rainy" / f"{name}.png") as im:
                assert (int(rows[name]["width"]), int(rows[name]["height"])) == im.size
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["num_images"] == len(rows)
        assert summary["input_psnr_y"] == pytest.approx(REFERENCE_MEANS[folder][col], abs=0.01)
        assert summary["input_ssim_y"] == pytest.approx(REFERENCE_MEANS[folder][col + 1], abs=0.0005)


def test_crop_border_changes_the_evaluated_area(run_cli, runs, tmp_path):
    from erl_derain import metrics
    from erl_derain.data.image_io import load_rgb

    out = tmp_path / "ev"
    code, _, err = run_cli("evaluate", f"--model_dir={runs['baseline']}", f"--dataset=folder:{runs['data']}",
                           f"--output={out}", "--crop_border=4")
    assert code == 0, err
    row = next(csv.DictReader(open(out / "per_image.csv")))
    rainy = load_rgb(str(runs["data"] / "rainy" / f"{row['name']}.png"))[4:-4, 4:-4]
    clean = load_rgb(str(runs["data"] / "clean" / f"{row['name']}.png"))[4:-4, 4:-4]
    assert float(row["input_psnr_y"]) == pytest.approx(metrics.psnr_y(rainy, clean), abs=1e-9)


def test_compare_dissection_end_to_end(run_cli, runs, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, err = run_cli("compare", f"--baseline={runs['baseline']}", f"--candidate={runs['candidate']}",
                                f"--dataset=folder:{runs['data']}", f"--output={out}", "--split=test")
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    summary = json.loads((out / "metrics.json").read_text())
    assert len(rows) == summary["num_images"] == 4
    base = np.array([float(r["baseline_psnr_y"]) for r in rows])
    cand = np.array([float(r["candidate_psnr_y"]) for r in rows])
    # Recount from the per-image PSNRs: hard = below the baseline's mean (Section 4.3).
    hard = base < base.mean()
    assert summary["num_hard"] == hard.sum() and summary["num_easy"] == (~hard).sum()
    assert summary["improved_proportion"] == pytest.approx(np.mean(cand > base))
    if hard.any():
        assert summary["improved_proportion_hard"] == pytest.approx(np.mean((cand > base)[hard]))
    ior = [float(r["ior"]) for r in rows if r["ior"] not in ("", "nan")]
    assert summary["mIoR"] == pytest.approx(np.mean(ior))
    assert all(r["rain_map"] == "threshold" for r in rows)
    # The baseline's numbers are those `evaluate` reports for it.
    code, _, err = run_cli("evaluate", f"--model_dir={runs['baseline']}", f"--dataset=folder:{runs['data']}",
                           f"--output={tmp_path / 'ev'}")
    assert code == 0, err
    ev = {r["name"]: float(r["psnr_y"]) for r in csv.DictReader(open(tmp_path / "ev" / "per_image.csv"))}
    for r in rows:
        assert float(r["baseline_psnr_y"]) == pytest.approx(ev[r["name"]], abs=1e-9)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) >= 4, pngs
    assert "improves" in stdout and "mIoR" in stdout


def test_cross_dataset_table(run_cli, runs, tmp_path):
    other = make_folder_dataset(tmp_path / "other", n=2, size=(24, 24), seed=5)
    out = tmp_path / "table"
    code, stdout, err = run_cli("evaluate", f"--model_dir={runs['baseline']},{runs['candidate']}",
                                f"--dataset=folder:{runs['data']},folder:{other}", f"--output={out}")
    assert code == 0, err
    table = (out / "cross_dataset.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 2  # header, rule, one row per model
    cells = list(csv.DictReader(open(out / "cross_dataset.csv")))
    assert len(cells) == 4
    # Each cell is that model's own evaluation on that dataset.
    for cell in cells:
        model = runs["baseline"] if "baseline" in cell["trained_on"] else runs["candidate"]
        code, _, err = run_cli("evaluate", f"--model_dir={model}", f"--dataset={cell['tested_on']}",
                               f"--output={tmp_path / 'single'}")
        assert code == 0, err
        single = json.loads((tmp_path / "single" / "metrics.json").read_text())
        assert float(cell["psnr_y"]) == pytest.approx(single["psnr_y"], abs=1e-9)
        assert f"{single['psnr_y']:.2f} / {single['ssim_y']:.4f}" in table


def test_compare_and_prepare_errors(run_cli, runs, tmp_path):
    code, _, err = run_cli("compare", f"--baseline={runs['baseline']}")
    assert code == 2 and "--candidate is required" in err
    code, _, err = run_cli("compare", f"--baseline={tmp_path / 'nope'}", f"--candidate={runs['candidate']}")
    assert code == 2 and "nope" in err
    code, _, err = run_cli("prepare", "--dataset=no_such_dataset", f"--data_dir={tmp_path / 'tfds'}")
    assert code == 2 and "unknown dataset" in err
    code, _, err = run_cli("prepare", f"--dataset=folder:{runs['data']}")
    assert code == 2 and "nothing to prepare" in err


def test_prepare_then_compare_uses_the_datasets_rain_masks(run_cli, runs, tmp_path):
    """rain100h built from its dummy_data (JORDER layout with rainregion-N.png masks) through
    `erl-derain prepare`; compare reads the masks instead of thresholding."""
    dummy = Path(__file__).resolve().parents[1] / "tfds_builders" / "rain100h" / "dummy_data"
    data_dir = tmp_path / "tfds"
    code, out, err = run_cli("prepare", "--dataset=rain100h", f"--data_dir={data_dir}", f"--manual_dir={dummy}")
    assert code == 0, err
    assert "Prepared rain100h" in out and "train: 3" in out
    code, _, err = run_cli("compare", f"--baseline={runs['baseline']}", f"--candidate={runs['candidate']}",
                           "--dataset=rain100h", f"--data_dir={data_dir}", "--split=train", f"--output={tmp_path / 'c'}")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "c" / "per_image.csv")))
    assert len(rows) == 3
    for r in rows:
        assert r["rain_map"] == "dataset_mask"
        with Image.open(dummy / "RainTrainH" / f"rainregion-{r['name'].split('-')[-1]}.png") as im:
            mask = np.asarray(im)
        mask = mask[..., 0] if mask.ndim == 3 else mask
        assert float(r["rain_fraction"]) == pytest.approx(np.mean(mask != 0))
    # Without a manual_dir an unprepared benchmark fails with the instructions, not a stack trace.
    code, _, err = run_cli("prepare", "--dataset=rain100l", f"--data_dir={tmp_path / 'empty'}")
    assert code == 1 and "rain100l" in err and "RainTrainL" in err
