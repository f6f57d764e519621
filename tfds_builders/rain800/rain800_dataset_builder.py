"""rain800: the synthetic pairs of Zhang, Sindagi & Patel ("Image De-raining Using a Conditional
Generative Adversarial Network", IEEE TCSVT 2019), read from a manual_dir.

``training/*.jpg`` (700) and ``test_syn/*.jpg`` (100) (also ``train`` / ``test``), each file holding
the clean and the rainy image side by side. Which half is rainy is a config:

* ``rainy_right`` (default): what the authors' own code reads. ID-CGAN's loader
  (``IDGAN/data/donkey_folder.lua``, ``loadImage``) crops ``imA = (0, 0, w/2, h)`` and
  ``imB = (w/2, 0, w, h)``; its README trains and tests with ``which_direction=BtoA`` (also the default
  of ``test/test.lua``), and with BtoA the generator's input ``real_A`` is ``imB``: the right half is
  the rainy input, the left half the clean target.
* ``rainy_left``: for redistributions that swapped the halves (some third-party Rain800 loaders read
  the left half as rainy). Check one file if unsure.

Both halves are ``w // 2`` wide; an odd width drops the last column. Features: ``rainy``, ``clean``,
``name`` (the file stem).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from tfds_builders import paired_common as pc

SPLIT_DIRS = {"train": ("training", "train"), "test": ("test_syn", "test")}

INSTRUCTIONS = f"""\
Rain800 (Zhang, Sindagi & Patel, "Image De-raining Using a Conditional Generative Adversarial
Network", IEEE TCSVT 2019): 700 training and 100 synthetic test pairs, clean and rainy image side by
side in each file (rainy on the right in the authors' archive: config 'rainy_right', the default;
'rainy_left' for copies with swapped halves).
Put the data into the manual_dir (folders may sit up to {pc.MAX_SEARCH_DEPTH} levels down), e.g.
  <manual_dir>/
    training/1.jpg ... 700.jpg      -> train   (or train/)
    test_syn/1.jpg ... 100.jpg      -> test    (or test/)
A split is built only if its folder is found.
Get it from the authors' repository https://github.com/hezhangsprinter/ID-CGAN (link in its README).
""" + pc.HOW_TO_BUILD.format(name="rain800")


class Rain800Config(tfds.core.BuilderConfig):
    def __init__(self, *, rainy_side: str, **kwargs):
        super().__init__(**kwargs)
        self.rainy_side = rainy_side


def _images_or_none(folder):
    return pc.image_files(folder) or None


class Builder(pc.ManualBuilder):
    """Rain800: side-by-side clean|rainy files (which half is rainy: the config)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://github.com/hezhangsprinter/ID-CGAN"
    EXPECTED_COUNTS = {"train": (700,), "test": (100,)}
    BUILDER_CONFIGS = [
        Rain800Config(name="rainy_right", rainy_side="right",
                      description="rainy image in the right half, clean in the left (the authors' archive)"),
        Rain800Config(name="rainy_left", rainy_side="left",
                      description="rainy image in the left half, clean in the right (swapped copies)"),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "rainy_right"

    def _find_splits(self, root):
        folders = pc.walk_folders(root)
        notes: list[str] = []
        out = {}
        for split, names in SPLIT_DIRS.items():
            hit = pc.find_split_folder(folders, names, _images_or_none, notes=notes)
            sources = []
            if hit:
                folder, files = hit
                seen = {}
                for path in files:
                    if path.stem in seen:
                        raise pc.ImagePairError(f"{seen[path.stem]} and {path} have the same name stem in "
                                                f"{folder.path}; remove one")
                    seen[path.stem] = path
                    sources.append(pc.Source(name=path.stem, rainy=path))
            out[split] = sources
        return out, notes

    def _example(self, source):
        rainy, clean = pc.split_side_by_side(pc.read_rgb(source.rainy), source.rainy,
                                             self.builder_config.rainy_side)
        return {"rainy": rainy, "clean": clean, "name": source.name}
