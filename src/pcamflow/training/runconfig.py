"""The run config: what one run (grid point, seed) of training is, checked against the schema.

A run config is
    {data: <prepared store>, model, lr, batch_size, optimizer, seed, training: {...}}
(the grid keys at the top level, every other setting in the validated `training` block).
"""

from __future__ import annotations

import copy
import os

import numpy as np

from pcamflow.config import GRID_KEYS, load_schema, operational_keys, validate
from pcamflow.data.store import store_files
from pcamflow.errors import PcamflowError

# Training settings that do not change what is learned (schema.yaml `operational: true`): a
# checkpoint written under other values of these (another device, thread count or logging cadence)
# still resumes.
OPERATIONAL_KEYS = tuple(key.split(".", 1)[1] for key in operational_keys() if key.startswith("training."))


def make_run_config(point: dict, seed: int, training: dict, data: str | os.PathLike) -> dict:
    """The run config of one (grid point, seed) of the workflow."""
    return plain({**point, "seed": seed, "training": copy.deepcopy(training), "data": os.fspath(data)})


def plain(obj):
    """numpy scalars (e.g. from a Paramspace row) -> Python values, recursively."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def run_config_schema() -> dict:
    """JSON Schema of a run config, built from the workflow schema (one grid value per grid key)."""
    schema = load_schema()
    grid = schema["properties"]["grid"]["properties"]
    properties = {key: dict(sub["items"], description=sub["description"]) for key, sub in grid.items()}
    properties["data"] = {"type": "string", "description": "Prepared store directory."}
    properties["seed"] = dict(schema["properties"]["seeds"]["items"], description="Seed of the run.")
    properties["training"] = {"$ref": "#/$defs/training"}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["data", "seed", *GRID_KEYS],
        "properties": properties,
        "$defs": schema["$defs"],
    }


def validate_run_config(run_config: dict, source: str = "run config") -> dict:
    """The run config with training defaults filled in; one clear PcamflowError when it is wrong."""
    if not isinstance(run_config, dict):
        raise PcamflowError(f"{source}: expected a mapping of keys to values")
    cfg = validate(plain(run_config), run_config_schema(), source)
    for path in store_files(cfg["data"], ("train", "valid")):
        if not path.exists():
            raise PcamflowError(f"{source}: key 'data': {path} missing (run the prepare rule first)")
    return cfg
