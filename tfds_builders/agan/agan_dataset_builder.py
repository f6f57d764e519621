"""agan: the raindrop pairs of Qian et al. ("Attentive Generative Adversarial Network for Raindrop
Removal from a Single Image", CVPR 2018), read from a manual_dir.

Splits ``train`` (861 pairs), ``test_a`` (58, PNG; a subset of test_b of better alignment) and
``test_b`` (249, JPEG), each a folder with ``data/N_rain.*`` (rainy) and ``gt/N_clean.*`` (clean),
paired on N. Features: ``rainy``, ``clean``, ``name`` (the clean file's stem, ``N_clean``).
"""

from __future__ import annotations

import re

from tfds_builders import paired_common as pc

SPLIT_DIRS = {"train": ("train",), "test_a": ("test_a",), "test_b": ("test_b",)}
_RAINY = re.compile(r"(\d+)_rain", re.I)
_CLEAN = re.compile(r"(\d+)_clean", re.I)

INSTRUCTIONS = f"""\
AGAN raindrop data (Qian et al., "Attentive Generative Adversarial Network for Raindrop Removal from a
Single Image", CVPR 2018): train (861 pairs), test_a (58), test_b (249).
Put the data into the manual_dir (folders may sit up to {pc.MAX_SEARCH_DEPTH} levels down), e.g.
  <manual_dir>/
    train/data/0_rain.png ...    train/gt/0_clean.png ...
    test_a/data/0_rain.png ...   test_a/gt/0_clean.png ...
    test_b/data/0_rain.jpg ...   test_b/gt/0_clean.jpg ...
A split is built only if its folder is found.
Get it from the authors' repository https://github.com/rui1996/DeRaindrop (links in its README).
""" + pc.HOW_TO_BUILD.format(name="agan")


def agan_sources(folder):
    data, gt = pc.child_dir(folder, "data"), pc.child_dir(folder, "gt")
    if data is None or gt is None:
        return None
    rainy = pc.files_by_key(data, _RAINY)
    if not rainy:
        return None
    return pc.sources_from_keys(rainy, pc.files_by_key(gt, _CLEAN), clean_dir=gt, partner_hint="{}_clean.*".format)


class Builder(pc.ManualBuilder):
    """AGAN raindrop pairs: train, test_a, test_b."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://rui1996.github.io/raindrop/raindrop_removal.html"
    EXPECTED_COUNTS = {"train": (861,), "test_a": (58,), "test_b": (249,)}

    def _find_splits(self, root):
        folders = pc.walk_folders(root)
        notes: list[str] = []
        out = {}
        for split, names in SPLIT_DIRS.items():
            hit = pc.find_split_folder(folders, names, agan_sources, notes=notes)
            out[split] = hit[1] if hit else []
        return out, notes

    def _example(self, source):
        rainy, clean = pc.load_pair(source.rainy, source.clean)
        return {"rainy": rainy, "clean": clean, "name": source.name}
