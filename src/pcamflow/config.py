"""Configuration: one JSON Schema (schema.yaml) gives every key its type, default and description."""

from __future__ import annotations

import copy
import itertools
import math
import os
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

from pcamflow.errors import PcamflowError
from pcamflow.rundir import VAL_METRICS

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")
GRID_KEYS = ("model", "lr", "batch_size", "optimizer")  # always present in a grid point


@lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        schema = yaml.safe_load(fh)
    # the validation metrics are named once, in the run-directory contract
    schema["$defs"]["val_metric"]["enum"] = list(VAL_METRICS)
    return schema


def _with_defaults(validator_class):
    """A validator that fills in each property's default before descending into it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                sub = _resolve(sub)
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    # YAML's 1.0 is no whole number (jsonschema counts it as one) and .inf/.nan no usable number:
    # every integer key refuses floats and every number key non-finite values
    checker = validator_class.TYPE_CHECKER.redefine_many(
        {
            "integer": lambda _, value: isinstance(value, int) and not isinstance(value, bool),
            "number": lambda _, value: (
                isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            ),
        }
    )
    return jsonschema.validators.extend(validator_class, {"properties": set_defaults}, type_checker=checker)


def _resolve(sub: dict) -> dict:
    """A property's schema with its $ref's target filled in (its own keys, e.g. a default, win)."""
    if "$ref" in sub:
        rest = {k: v for k, v in sub.items() if k != "$ref"}
        return {**load_schema()["$defs"][sub["$ref"].rsplit("/", 1)[-1]], **rest}  # every $def is there
    return sub


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def validate(cfg: dict, schema: dict | None = None, source: str = "config") -> dict:
    """Return a copy of cfg with defaults filled in; raise PcamflowError naming the bad key."""
    cfg = copy.deepcopy(cfg) if cfg is not None else {}
    schema = schema or load_schema()
    errors = sorted(_Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        raise PcamflowError(f"{source}: {describe_error(errors[0])}")
    return cfg


def validate_config(cfg: dict, source: str = "config", *, workflow: bool = True) -> dict:
    """workflow=False skips the checks that concern a workflow run (data_dir, batch sizes against
    the train split), for a command that uses one section with the other defaults."""
    cfg = validate(cfg, source=source)
    # rules between keys, which the schema cannot state: checked here so they fail before any job
    problem = slice_thresholds_problem(cfg["slices"]["dark"], cfg["slices"]["bright"])
    problem = problem or (data_problem(cfg) if workflow else None)
    if problem:
        raise PcamflowError(f"{source}: {problem}")
    return cfg


def data_problem(cfg: dict) -> str | None:
    """Why data_dir or the batch sizes cannot work with the data (None when they can)."""
    from pcamflow.constants import FULL_SIZES

    data_dir = Path(cfg["data_dir"])
    if cfg["dataset"] == "pcam" and data_dir.exists() and not data_dir.is_dir():
        return f"key 'data_dir': {data_dir} is a file, not a folder"
    # the most train tiles there can be (prepare may drop some): a larger batch never fills one step
    n_train = cfg["synthetic"]["n_train"] if cfg["dataset"] == "synthetic" else FULL_SIZES["train"]
    too_large = [b for b in cfg["grid"].get("batch_size", []) if b > n_train]
    if too_large:
        return (
            f"key 'grid.batch_size': {too_large[0]} is larger than the train split ({n_train} tiles); "
            "no training step could be taken"
        )
    return None


def slice_thresholds_problem(dark: float, bright: float) -> str | None:
    """Why slices.dark and slices.bright do not fit together (None when they do)."""
    if dark > bright:
        return (
            f"config keys 'slices.dark' ({dark}) and 'slices.bright' ({bright}): dark must not exceed bright"
        )
    return None


def validate_section(name: str, settings: dict, source: str = "config") -> dict:
    """Validate one top-level section on its own (a command's options laid over the defaults)."""
    return validate_config({name: settings}, source=source, workflow=False)[name]


def validate_training(settings: dict, source: str = "training") -> dict:
    """Validate a `training:` block on its own (used by `pcamflow train`)."""
    schema = load_schema()
    sub = dict(schema["$defs"]["training"], **{"$defs": schema["$defs"]})
    return validate(settings, sub, source)


def describe_error(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        where = f" in '{key}'" if error.absolute_path else ""
        return f"unknown key {', '.join(repr(u) for u in unknown)}{where}{hint}"
    if error.validator == "enum":
        return f"key '{key}': {error.instance!r} is not one of {error.validator_value}"
    if error.validator == "type" and isinstance(error.instance, float):
        if not math.isfinite(error.instance):
            return f"key '{key}': {error.instance} is not a finite number"
        if error.validator_value == "integer":
            hint = f" (write {error.instance:.0f})" if error.instance.is_integer() else ""
            return f"key '{key}': {error.instance} is not a whole number{hint}"
    if error.validator == "minItems" and error.validator_value == 1:
        return f"key '{key}': the list is empty; give at least one value"
    return f"key '{key}': {error.message}"


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping, turning a missing or malformed file into one clear line."""
    path = Path(path)
    if not path.exists():
        raise PcamflowError(f"{path}: no such file")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise PcamflowError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PcamflowError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def grid_points(cfg: dict) -> list[dict]:
    """Every combination of a validated config's grid values, keys in GRID_KEYS order (paths never
    depend on YAML order; the schema requires every key, with at least one value, and no other)."""
    grid = cfg["grid"]
    return [dict(zip(GRID_KEYS, values)) for values in itertools.product(*(grid[k] for k in GRID_KEYS))]
