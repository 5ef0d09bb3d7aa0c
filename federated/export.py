"""Export a (committed) model as a self-contained ``.keras`` file.

The exported model works in physical units: the task's fixed standardisation is folded in as a
``Normalization`` layer in front (and, for humidity, a ``Rescaling`` layer behind), so a user of the
file needs neither fedledger nor the constants:

* humidity: input ``[[temperature_c]]`` -> output ``[[humidity_pct]]``;
* traceability: input ``[[temperature_c, humidity_pct]]`` -> class probabilities, where column i
  is the i-th device of the sorted device list the run was trained with.

Only built-in Keras layers are used, so ``keras.models.load_model(path)`` needs no custom objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from federated import tasks


def export_keras(
    task: str, weights: Sequence[np.ndarray], path: str | Path, num_classes: int | None = None
) -> Path:
    """Write `weights` of `task` as a Keras 3 ``.keras`` file at `path`; returns the path."""
    out = Path(path)
    if out.suffix != ".keras":
        raise ValueError(f"Keras 3 saves only to a .keras path, got {out}")
    k = tasks._keras()
    core = tasks.build_model(task, num_classes)
    tasks._set_weights(core, weights)
    if task == "humidity":
        layers = [
            k.Input(shape=(1,), name="temperature_c"),
            k.layers.Normalization(mean=[tasks.TEMP_MEAN], variance=[tasks.TEMP_STD**2], name="standardise"),
            core,
            k.layers.Rescaling(scale=tasks.HUM_STD, offset=tasks.HUM_MEAN, name="humidity_pct"),
        ]
    else:
        layers = [
            k.Input(shape=(2,), name="temperature_c_humidity_pct"),
            k.layers.Normalization(
                mean=[tasks.TEMP_MEAN, tasks.HUM_MEAN],
                variance=[tasks.TEMP_STD**2, tasks.HUM_STD**2],
                name="standardise",
            ),
            core,
        ]
    model = k.Sequential(layers, name=f"fedledger_{task}_export")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return out
