"""rain100h: heavy-rain synthetic pairs of Yang et al. (JORDER, CVPR 2017), read from a manual_dir.

train = RainTrainH (1800 pairs; some redistributions have 1254), test = Rain100H (100 pairs), in any
of the layouts of the original release and its redistributions (PKU archives, JORDER-E, PReNet's and
MPRNet's copies); see ``paired_common.Rain100Builder`` and README.md. Features: ``rainy``, ``clean``,
``name`` (the clean file's stem), ``rain_mask`` (0/1, from ``rainregion-N.png``) and ``has_rain_mask``
(False, with an all-zero mask, where the distribution has no masks).
"""

from __future__ import annotations

from tfds_builders import paired_common


class Builder(paired_common.Rain100Builder):
    """Rain100H (test) and RainTrainH (train)."""

    LEVEL = "H"
    MANUAL_DOWNLOAD_INSTRUCTIONS = paired_common.rain100_instructions("H")
    EXPECTED_COUNTS = {"train": (1800, 1254), "test": (100,)}
