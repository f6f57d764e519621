"""rain100l: light-rain synthetic pairs of Yang et al. (JORDER, CVPR 2017), read from a manual_dir.

train = RainTrainL (200 pairs), test = Rain100L (100 pairs), in any of the layouts of the original
release and its redistributions (PKU archives, JORDER-E, PReNet's and MPRNet's copies); see
``paired_common.Rain100Builder`` and README.md. Features: ``rainy``, ``clean``, ``name`` (the clean
file's stem), ``rain_mask`` (0/1, from ``rainregion-N.png``) and ``has_rain_mask`` (False, with an
all-zero mask, where the distribution has no masks).
"""

from __future__ import annotations

from tfds_builders import paired_common


class Builder(paired_common.Rain100Builder):
    """Rain100L (test) and RainTrainL (train)."""

    LEVEL = "L"
    MANUAL_DOWNLOAD_INSTRUCTIONS = paired_common.rain100_instructions("L")
    EXPECTED_COUNTS = {"train": (200,), "test": (100,)}
