"""TFDS builders for the deraining datasets. Importing this package registers them with TFDS."""

from tfds_builders.synthetic_rain import synthetic_rain_dataset_builder  # noqa: F401  (registers 'synthetic_rain')
