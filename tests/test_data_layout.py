"""The layout of the data layer: the streams are built from the public primitives of
``erl_derain.data.streams``; no module uses another's private names; ``erl_derain.data`` imports no
builder package (the builders depend on it), and the name -> builder catalog is
``erl_derain.datasets``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "erl_derain" / "data"
ERL_DATASETS = ("synthetic_rain", "rain100h", "rain100l", "ddn", "did", "agan", "rain800", "real_rain",
                "cityscapes_rain")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _violations(path: Path, in_data: bool | None = None) -> list[str]:
    """Imports of builder packages or of the catalog (by a module of erl_derain/data), and uses of
    other modules' private names."""
    tree = ast.parse(path.read_text(), str(path))
    module_aliases: set[str] = set()  # names bound to erl_derain modules
    found = []
    in_data = path.parent == DATA if in_data is None else in_data
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if in_data and alias.name.split(".")[0] == "tfds_builders":
                    found.append(f"{path.name}:{node.lineno} imports {alias.name}")
                if in_data and alias.name == "erl_derain.datasets":
                    found.append(f"{path.name}:{node.lineno} imports the catalog {alias.name}")
                if alias.name.startswith("erl_derain"):
                    module_aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if in_data and module.split(".")[0] == "tfds_builders":
                found.append(f"{path.name}:{node.lineno} imports from {module}")
            if in_data and (module == "erl_derain.datasets"
                            or (module == "erl_derain" and any(a.name == "datasets" for a in node.names))):
                found.append(f"{path.name}:{node.lineno} imports the catalog")
            if module.startswith("erl_derain") or node.level:
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{path.name}:{node.lineno} imports private {module}.{alias.name}")
                    if module in ("erl_derain", "erl_derain.data"):
                        module_aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases and _private(node.attr)):
            found.append(f"{path.name}:{node.lineno} uses private {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names_nor_imports_the_builders():
    files = sorted(DATA.glob("*.py")) + [REPO / "erl_derain" / "datasets.py"]
    assert len(files) >= 6
    problems = [v for path in files for v in _violations(path)]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_violations(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import tfds_builders
        from erl_derain.data import pipelines as pl
        from erl_derain.data.streams import _cv2_imread
        pl._folder_dataset
    """))
    found = _violations(probe, in_data=True)
    assert any("imports tfds_builders" in f for f in found)
    assert any("private erl_derain.data.streams._cv2_imread" in f for f in found)
    assert any("private pl._folder_dataset" in f for f in found)


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=str(REPO), env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_importing_the_data_layer_imports_no_builder_package(tmp_path):
    """A fresh interpreter: the data modules, and a folder stream, leave tfds_builders (and the
    catalog) unimported."""
    out = _run(f"""
        import sys
        import erl_derain.data.pipelines, erl_derain.data.unpaired, erl_derain.data.streams
        import erl_derain.data.image_io, erl_derain.data.rain_synthesis
        print("after import:", "tfds_builders" in sys.modules, "erl_derain.datasets" in sys.modules)
        sys.path.insert(0, {str(REPO)!r})
        from tests.conftest import make_folder_dataset
        from pathlib import Path
        folder = make_folder_dataset(Path({str(tmp_path)!r}) / "pairs", n=2, size=(16, 16))
        next(iter(erl_derain.data.pipelines.paired_dataset(f"folder:{{folder}}", crop_size=8)))
        print("after a folder stream:", "tfds_builders" in sys.modules, "erl_derain.datasets" in sys.modules)
    """)
    assert "after import: False False" in out and "after a folder stream: False False" in out, out


def test_names_need_the_catalog_and_the_catalog_registers_them(tmp_path):
    """An erl_derain name is unknown to the data layer until the catalog is imported, and the error says
    so; after ``import erl_derain.datasets`` it resolves."""
    out = _run(f"""
        import sys
        from erl_derain.data import pipelines, streams
        try:
            pipelines.paired_dataset("rain100h", data_dir={str(tmp_path)!r})
        except streams.UnknownDatasetError as err:
            print("error:", err)
        print("builders imported:", "tfds_builders" in sys.modules)
        import erl_derain.datasets
        features = pipelines.dataset_features("rain100h", data_dir={str(tmp_path)!r})
        print("features:", sorted(features.items()))
    """)
    assert "error: unknown dataset 'rain100h'" in out and "importing erl_derain.datasets" in out
    assert "builders imported: False" in out
    assert "features: [('has_rain_mask', 'value'), ('rain_mask', 'map')]" in out, out


def test_catalog_lists_and_resolves_the_erl_derain_datasets(tmp_path):
    from erl_derain import datasets
    from erl_derain.data import pipelines

    assert set(ERL_DATASETS) <= set(datasets.available_builders())
    builder = datasets.load_builder("rain100l", str(tmp_path))
    assert builder.name == "rain100l" and not builder.is_prepared()
    assert datasets.load_builder(builder) is builder
    with pytest.raises(datasets.DatasetError) as info:
        datasets.load_builder("no_such_rain_dataset", str(tmp_path))
    assert all(name in str(info.value) for name in ERL_DATASETS) and "folder:" in str(info.value)
    assert pipelines.prepare is datasets.prepare
