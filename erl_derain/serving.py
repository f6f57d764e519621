"""SavedModel export (TF Serving layout ``<export_base>/<version>/``).

The exported graph is the inference network only; it pads any input to the network's multiple and
crops back, so ``serving_default`` takes float32 ``images`` [batch, height, width, 3] in [0, 1] of
any size and returns ``derained``.
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from erl_derain.inference import apply_padded


class DerainModule(tf.Module):
    def __init__(self, model, multiple: int, metadata: dict):
        super().__init__(name="erl_derain")
        self.model = model
        self.multiple = int(multiple)
        self.metadata_json = tf.Variable(json.dumps(metadata, sort_keys=True), trainable=False, name="metadata_json")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve(self, images):
        return {"derained": apply_padded(self.model, images, self.multiple)}


def next_version(export_base: str) -> int:
    if not os.path.isdir(export_base):
        return 1
    versions = [int(d) for d in os.listdir(export_base) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def export_saved_model(model, multiple: int, export_base: str, version: int | None = None,
                       metadata: dict | None = None) -> str:
    """Write ``<export_base>/<version>/`` (version defaults to the next integer) and return its path."""
    version = next_version(export_base) if version is None else int(version)
    path = os.path.join(export_base, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists: choose another --version or remove it")
    module = DerainModule(model, multiple, dict(metadata or {}, version=version))
    tmp = f"{path}.tmp-{os.getpid()}"
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    os.replace(tmp, path)  # TF Serving must never see a half-written version folder
    return path
