"""erl_derain: single-image deraining networks (ERL-Net, MENET, JRGR, IADN) in TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="erl_derain",
    version="0.1.0",
    description="Single-image deraining in TensorFlow 2 / Keras 3: ERL-Net, MENET, JRGR, intensity-aware PHP net.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["erl_derain", "erl_derain.*", "tfds_builders", "tfds_builders.*"]),
    package_data={
        "tfds_builders": ["*/README.md", "*/CITATIONS.bib", "*/checksums.tsv", "*/dummy_data/**/*"],
        "erl_derain": ["pretrained/*.npz", "pretrained/*.json", "pretrained/README.md", "pretrained/*.png",
                       "quality_models/*.npz", "quality_models/README.md"],
    },
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3.0",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # TFDS 4.9.10 imports it without declaring it
        "tensorboard",  # tf.summary needs it; TF 2.21 no longer installs it
        "absl-py",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "pillow",
        "scikit-image",  # its bundled photos are the clean images of the embedded synthetic_rain default
        "matplotlib",
    ],
    extras_require={
        # dill: tfds.testing imports it; tensorflow-serving-api: the PredictRequest round-trip tests;
        # hypothesis: the decoding fuzz tests
        "test": ["pytest", "pytest-xdist", "dill", "tensorflow-serving-api", "hypothesis"],
        "gpu": ["tensorflow[and-cuda]>=2.20"],
        "serving": ["tensorflow-serving-api"],
        # erl-derain export --format=onnx|litert: tf2onnx + onnx convert (1.17: the first tf2onnx without
        # protobuf~=3.20, which TensorFlow 2.20+ cannot use); onnxruntime and ai-edge-litert run and check the
        # files (the LiteRT converter is TensorFlow's own)
        "export": ["tf2onnx>=1.17", "onnx>=1.14", "onnxruntime", "ai-edge-litert"],
    },
    entry_points={"console_scripts": ["erl-derain=erl_derain.cli:run"]},
)
