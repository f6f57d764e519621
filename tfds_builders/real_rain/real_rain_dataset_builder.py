"""real_rain: unpaired real rainy photographs (no ground truth) from a folder, for methods that train
on real rain without pairs (JRGR) and for qualitative tests.

One ``train`` split with every image found in the manual_dir and its sub-folders (down to 4 levels;
PNG, JPEG, BMP, WebP, TIFF). Features: ``rainy`` (uint8 RGB) and ``name`` (the path below the
manual_dir without extension, e.g. ``12`` or ``night/3``). Upright RGB and grey JPEGs are stored as
their original bytes (no re-encoding: a 12 MP photo stays a few MB instead of a 20+ MB PNG, and its
pixels are exactly the file's); every file is fully decoded first so that corrupt or truncated ones
fail by name. Other files, and JPEGs with an EXIF orientation to apply, are decoded upright (as
``erl_derain.data.image_io.load_rgb`` reads them) and stored as PNG.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from tfds_builders import paired_common as pc

INSTRUCTIONS = f"""\
real_rain: real rainy photographs without ground truth (any source), e.g. the "Internet" real set of
SIRR (Wei et al., CVPR 2019) or the real rainy images JRGR (Ye et al., CVPR 2021) trains on.
Put the photos into the manual_dir (sub-folders down to {pc.MAX_SEARCH_DEPTH} levels are read too):
  <manual_dir>/
    1.jpg  2.jpg  ...  (png, jpg, jpeg, bmp, webp, tif)
Get SIRR's real set from https://github.com/wwzjer/Semi-supervised-IRR and JRGR's data from
https://github.com/guyii54/JRGR.
""" + pc.HOW_TO_BUILD.format(name="real_rain")


class Builder(pc.ManualBuilder):
    """Real rainy photographs, unpaired: one train split."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://github.com/wwzjer/Semi-supervised-IRR"
    SUPERVISED = False
    NOT_FOUND = f"no image files ({', '.join(pc.IMAGE_EXTENSIONS)})"

    def _features(self):
        return {"rainy": pc.rgb_image(), "name": tfds.features.Text()}

    def _find_splits(self, root):
        sources, seen = [], {}
        for folder in pc.walk_folders(root):
            for path in pc.image_files(folder.path):
                name = "/".join(folder.rel + (path.stem,))
                if name in seen:
                    raise pc.ImagePairError(f"{seen[name]} and {path} have the same name {name!r}; rename one")
                seen[name] = path
                sources.append(pc.Source(name=name, rainy=path))
        sources.sort(key=lambda s: pc.natural_key(s.name))
        return {"train": sources}, []

    def _example(self, source):
        return {"rainy": pc.read_rgb_keep_jpeg(source.rainy), "name": source.name}
