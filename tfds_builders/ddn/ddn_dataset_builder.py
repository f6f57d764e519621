"""ddn: DDN-Data / Rain14000 of Fu et al. ("Removing Rain from Single Images via a Deep Detail
Network", CVPR 2017), read from a manual_dir.

1000 clean images, each rendered with 14 rain types: ``rainy image/N_K.jpg`` (K = 1..14) and
``ground truth/N.jpg``. Split by clean image, as the papers do: N = 1..900 -> train (Rain12600),
N >= 901 -> test (Rain1400), so no clean image is in both splits. Every folder pair ``rainy image`` +
``ground truth`` (also ``rainy_image`` + ``ground_truth``, PReNet's copies in ``train/`` and
``test/``) found in the manual_dir contributes; the split comes from N, not from the folder.
Features: ``rainy``, ``clean``, ``name`` (``N_K``).
"""

from __future__ import annotations

import re

from tfds_builders import paired_common as pc

LAST_TRAIN_IMAGE = 900
_RAINY = re.compile(r"(\d+)_(\d+)")
_CLEAN = re.compile(r"(\d+)")

INSTRUCTIONS = f"""\
DDN-Data / Rain14000 (Fu et al., "Removing Rain from Single Images via a Deep Detail Network",
CVPR 2017): 1000 clean images x 14 rain renderings. Clean images 1-900 -> train (12600 pairs),
901-1000 -> test (1400 pairs, "Rain1400").
Put the data into the manual_dir (folders may sit up to {pc.MAX_SEARCH_DEPTH} levels down), e.g.
  <manual_dir>/
    rainy image/     1_1.jpg ... 1_14.jpg, 2_1.jpg, ... 1000_14.jpg
    ground truth/    1.jpg ... 1000.jpg
or PReNet's copy
  <manual_dir>/
    train/rainy_image/N_K.jpg   train/ground_truth/N.jpg
    test/rainy_image/N_K.jpg    test/ground_truth/N.jpg
Every 'rainy image' / 'rainy_image' folder with a 'ground truth' / 'ground_truth' sibling is read;
the split follows the clean image number N. A split is built only if it has images.
Get it from the DDN project page https://xueyangfu.github.io/projects/cvpr2017.html
(or PReNet's copies, https://github.com/csdwren/PReNet).
""" + pc.HOW_TO_BUILD.format(name="ddn")


class Builder(pc.ManualBuilder):
    """DDN-Data (Rain14000): Rain12600 train, Rain1400 test."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://xueyangfu.github.io/projects/cvpr2017.html"
    EXPECTED_COUNTS = {"train": (12600,), "test": (1400,)}

    def _find_splits(self, root):
        notes: list[str] = []
        seen = {}
        splits: dict[str, list[pc.Source]] = {"train": [], "test": []}
        for folder in pc.walk_folders(root):
            if pc.norm_name(folder.name) != "rainy_image":
                continue
            clean_dir = pc.child_dir(folder.path.parent, "ground_truth")
            if clean_dir is None:
                notes.append(f"{folder.shown()} has no 'ground truth' folder next to it")
                continue
            clean = pc.files_by_key(clean_dir, _CLEAN)
            for path in pc.image_files(folder.path):
                m = _RAINY.fullmatch(path.stem)
                if not m:
                    continue
                n, k = int(m.group(1)), int(m.group(2))
                name = f"{n}_{k}"
                if name in seen:
                    raise pc.ImagePairError(f"{seen[name]} and {path} are both rendering {name}; keep one copy")
                seen[name] = path
                if str(n) not in clean:
                    raise pc.ImagePairError(f"rainy image {path} has no clean partner: no {n}.* in {clean_dir}")
                split = "train" if n <= LAST_TRAIN_IMAGE else "test"
                splits[split].append(pc.Source(name=name, rainy=path, clean=clean[str(n)]))
        for sources in splits.values():
            sources.sort(key=lambda s: pc.natural_key(s.name))
        return splits, notes

    def _example(self, source):
        rainy, clean = pc.load_pair(source.rainy, source.clean)
        return {"rainy": rainy, "clean": clean, "name": source.name}
