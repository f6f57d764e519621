"""TFDS builders for the deraining datasets. Importing this package registers them with TFDS.

``synthetic_rain`` needs no download. The benchmarks (``rain100h``, ``rain100l``, ``ddn``, ``did``,
``agan``, ``rain800``), ``real_rain`` and ``cityscapes_rain`` (rain synthesised on Cityscapes) read a
manual_dir:
``tfds.builder(name, data_dir=...).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=...))``; their shared code is
``tfds_builders.paired_common``.

The builders use ``erl_derain.data`` (``image_io``, ``rain_synthesis``); the data layer never imports
this package. The catalog ``erl_derain.datasets`` imports it (so TFDS knows the names) and resolves
names to builders (``load_builder``, ``prepared_builder``, ``available_builders``).
"""

from tfds_builders.synthetic_rain import synthetic_rain_dataset_builder  # noqa: F401  (registers 'synthetic_rain')
from tfds_builders.rain100h import rain100h_dataset_builder  # noqa: F401  (registers 'rain100h')
from tfds_builders.rain100l import rain100l_dataset_builder  # noqa: F401  (registers 'rain100l')
from tfds_builders.ddn import ddn_dataset_builder  # noqa: F401  (registers 'ddn')
from tfds_builders.did import did_dataset_builder  # noqa: F401  (registers 'did')
from tfds_builders.agan import agan_dataset_builder  # noqa: F401  (registers 'agan')
from tfds_builders.rain800 import rain800_dataset_builder  # noqa: F401  (registers 'rain800')
from tfds_builders.real_rain import real_rain_dataset_builder  # noqa: F401  (registers 'real_rain')
from tfds_builders.cityscapes_rain import cityscapes_rain_dataset_builder  # noqa: F401  (registers 'cityscapes_rain')
