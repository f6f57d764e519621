"""did: the DID-MDN data of Zhang & Patel ("Density-aware Single Image De-raining using a Multi-stream
Dense Network", CVPR 2018), read from a manual_dir.

Training: ``DID-MDN-training/Rain_{Heavy,Medium,Light}/train2018new/*.jpg`` (4000 each); test:
``DID-MDN-test/*.jpg`` (1200). Every file holds the rainy image in its LEFT half and the clean image in
its RIGHT half (the authors' loader, ``datasets/pix2pix_val.py``, crops ``(0, 0, w/2, h)`` as the
network input and ``(w/2, 0, w, h)`` as the target). Both halves are ``w // 2`` wide; an odd width
drops the last column. Features: ``rainy``, ``clean``, ``name`` (train: ``<density>_<stem>``, since the
stems repeat across the three folders; test: the stem) and ``density`` (heavy / medium / light from the
folder; the test files carry no class: ``unknown``).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from tfds_builders import paired_common as pc

DENSITIES = ("heavy", "medium", "light")
CLASS_NAMES = list(DENSITIES) + ["unknown"]
RAINY_SIDE = "left"
_TEST_NAMES = ("DID-MDN-test",)  # no generic "test": any images would be split in halves
_TEST_WORDS = ("DID-MDN-test", "test", "testing", "DB_Rain_test")

INSTRUCTIONS = f"""\
DID-MDN (Zhang & Patel, "Density-aware Single Image De-raining using a Multi-stream Dense Network",
CVPR 2018): 12000 training pairs in three rain densities and 1200 test pairs. Every file holds the
rainy image (left half) and the clean image (right half) side by side.
Put the data into the manual_dir (folders may sit up to {pc.MAX_SEARCH_DEPTH} levels down), e.g.
  <manual_dir>/
    DID-MDN-training/
      Rain_Heavy/train2018new/0.jpg ... 3999.jpg     -> train, density 'heavy'
      Rain_Medium/train2018new/...                   -> train, density 'medium'
      Rain_Light/train2018new/...                    -> train, density 'light'
    DID-MDN-test/0.jpg ... 1199.jpg                  -> test, density 'unknown'
(images directly in Rain_Heavy/ etc. are read too). A split is built only if its folders are found.
Get it from the authors' repository https://github.com/hezhangsprinter/DID-MDN (links in its README).
""" + pc.HOW_TO_BUILD.format(name="did")


def _images_or_none(folder):
    return pc.image_files(folder) or None


def _density_images(folder):
    return _images_or_none(pc.child_dir(folder, "train2018new") or folder)


def _unique(sources, folder):
    seen = {}
    for s in sources:
        if s.name in seen:
            raise pc.ImagePairError(f"{seen[s.name]} and {s.rainy} have the same name stem {s.name!r} in {folder}; "
                                    "remove one")
        seen[s.name] = s.rainy
    return sources


class Builder(pc.ManualBuilder):
    """DID-MDN: side-by-side rainy|clean files, three densities."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://github.com/hezhangsprinter/DID-MDN"
    EXPECTED_COUNTS = {"train": (12000,), "test": (1200,)}

    def _features(self):
        return pc.paired_features(density=tfds.features.ClassLabel(names=CLASS_NAMES))

    def _find_splits(self, root):
        folders = pc.walk_folders(root)
        notes: list[str] = []
        train = []
        for density in DENSITIES:
            hit = pc.find_split_folder(folders, (f"Rain_{density}",), _density_images, exclude=_TEST_WORDS,
                                       notes=notes)
            if hit:
                folder, files = hit
                train += _unique([pc.Source(name=f"{density}_{p.stem}", rainy=p, label=density) for p in files],
                                 folder.path)
        test = []
        hit = pc.find_split_folder(folders, _TEST_NAMES, _images_or_none, exclude=("DID-MDN-training",), notes=notes)
        if hit:
            folder, files = hit
            test = _unique([pc.Source(name=p.stem, rainy=p, label="unknown") for p in files], folder.path)
        for sources in (train, test):
            sources.sort(key=lambda s: pc.natural_key(s.name))
        return {"train": train, "test": test}, notes

    def _example(self, source):
        rainy, clean = pc.split_side_by_side(pc.read_rgb(source.rainy), source.rainy, RAINY_SIDE)
        return {"rainy": rainy, "clean": clean, "name": source.name, "density": source.label}
