"""Configuration: one JSON Schema (schema.yaml) gives every key its type, default and description."""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

from pcamflow.errors import PcamflowError
from pcamflow.rundir import VAL_METRICS

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")
# The Snakefile's own config file (`configfile:`), under which --configfile files are layered
# (relative to the repository root, where snakemake, `pcamflow status` and `cost` are run).
WORKFLOW_CONFIG = Path("config/config.yaml")
GRID_KEYS = ("model", "lr", "batch_size", "optimizer")  # always present in a grid point
# yaml.safe_load's constructor with libyaml's parser where PyYAML has it: the same values and errors,
# read some six times faster (schema.yaml: about 30 ms of every snakemake start and job, now 5 ms)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        schema = yaml.load(fh, Loader=SAFE_LOADER)
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


def validate(cfg: dict, schema: dict | None = None, source: str | Callable[[list], str] = "config") -> dict:
    """Return a copy of cfg with defaults filled in; raise PcamflowError naming the bad key. `source`
    names where cfg came from: a name, or a function of the bad key's path (list of keys) that
    names the config layer that set it."""
    cfg = copy.deepcopy(cfg) if cfg is not None else {}
    schema = schema or load_schema()
    errors = sorted(_Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        where = source(_key_path(errors[0])) if callable(source) else source
        raise PcamflowError(f"{where}: {describe_error(errors[0])}")
    return cfg


def _key_path(error: jsonschema.ValidationError) -> list:
    """The keys leading to what is wrong (an unknown key: the key itself)."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        path += sorted(key for key in error.instance if key not in allowed)[:1]
    return path


def validate_config(
    cfg: dict, source: str | Callable[[list], str] = "config", *, workflow: bool = True
) -> dict:
    """workflow=False skips the checks that concern a workflow run (data_dir, batch sizes against
    the train split), for a command that uses one section with the other defaults. `source`: as
    for validate (the rules between keys below name source([]), the last layer)."""
    cfg = coerce_to_schema(cfg, load_schema())
    cfg = validate(cfg, source=source)
    # rules between keys, which the schema cannot state: checked here so they fail before any job
    problem = slice_thresholds_problem(cfg["slices"]["dark"], cfg["slices"]["bright"])
    problem = problem or (data_problem(cfg) if workflow else None)
    if problem:
        raise PcamflowError(f"{source([]) if callable(source) else source}: {problem}")
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


def coerce_to_schema(value, schema: dict, root: dict | None = None):
    """`value` with text turned into the type the schema expects where it reads as one.

    Snakemake hands `--config` values over as text inside lists and mappings (seeds='[1,2]' gives
    ['1', '2']; training='{epochs: 3}' gives {'epochs': '3'}), so each text is read as YAML (numbers
    also in forms YAML 1.1 keeps as text, such as 1e-3) where the schema wants a number, boolean,
    list or mapping. Anything that does not read as the wanted type is left for validation to name.
    """
    root = root or schema
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    wanted = schema.get("type")
    types = wanted if isinstance(wanted, list) else [wanted]  # e.g. [string, boolean]
    for kind in types:
        if isinstance(value, str) and kind not in (None, "string"):
            value = _read_text_as(value, kind)
    if "array" in types and isinstance(value, list) and "items" in schema:
        return [coerce_to_schema(item, schema["items"], root) for item in value]
    if "object" in types and isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            key: coerce_to_schema(item, properties.get(key, extra if isinstance(extra, dict) else {}), root)
            for key, item in value.items()
        }
    return value


def _read_text_as(text: str, wanted: str):
    if wanted in ("integer", "number"):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if wanted == "integer" and number.is_integer() else number
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    expected = {"boolean": bool, "array": list, "object": dict}.get(wanted)
    return parsed if expected and isinstance(parsed, expected) else text


def operational_keys(schema: dict | None = None, prefix: str = "") -> list[str]:
    """Dotted names of the keys marked `operational: true` in the schema (they cannot change a result)."""
    schema = schema or load_schema()
    found = []
    for name, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = load_schema()["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
        if sub.get("operational"):
            found.append(prefix + name)
        found += operational_keys(sub, f"{prefix}{name}.")
    return found


def result_settings(cfg: dict, section: str) -> dict:
    """A config section without its operational keys: what a rule's params may hold, so that changing
    an operational key (training.log_every, ...) reruns nothing."""
    operational = {key.split(".", 1)[1] for key in operational_keys() if key.startswith(f"{section}.")}
    return {key: value for key, value in cfg[section].items() if key not in operational}


def operational_settings(cfg: dict, section: str) -> dict:
    """The operational keys of a config section (scripts read them from snakemake.config)."""
    kept = result_settings(cfg, section)
    return {key: value for key, value in cfg[section].items() if key not in kept}


def merge_config(base: dict, update: dict, schema: dict | None = None) -> dict:
    """`base` updated key by key with `update`, mappings merged recursively, except a mapping whose
    keys are names the user chooses (`partitions`: keyed_by_name), which `update` gives whole: a
    config can then say exactly which partitions it means."""
    schema = load_schema() if schema is None else schema
    merged = copy.deepcopy(base)
    for key, value in update.items():
        sub = _resolve(schema.get("properties", {}).get(key, {}))
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not keyed_by_name(sub):
            merged[key] = merge_config(merged[key], value, sub)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def keyed_by_name(schema: dict) -> bool:
    """Whether a schema's mapping has keys the user names (each value checked by one schema) rather
    than keys the schema lists."""
    return isinstance(schema.get("additionalProperties"), dict) and not schema.get("properties")


def layered_config(base: Sequence[tuple[str, dict]], given: Sequence[tuple[str, dict]]) -> dict:
    """The config of (name, mapping) layers: the Snakefile's own config file(s) (`base`), then those
    given on the command line in their order (each --configfile, then the --config values), each laid
    over the ones before (merge_config), validated with defaults filled in; a bad key is blamed on
    the last layer that set it.

    The one layering of a workflow run: rules/common.smk gives what Snakemake was given, `pcamflow
    status` and `cost` the same files (load_workflow_config). Keys keep the order Snakemake's own
    merge gives them (first seen in `given`, then in `base`): a rule's params are compared as text,
    so another order would make Snakemake rerun finished jobs."""
    layers = [*base, *given]
    cfg = {}
    for _, layer in layers:
        cfg = merge_config(cfg, layer)

    def source(path: list) -> str:
        setting = [name for name, layer in layers if _holds(layer, path)]
        return (setting or [name for name, _ in layers] or ["config"])[-1]

    return validate_config(_ordered(cfg, [layer for _, layer in [*given, *base]]), source=source)


def _ordered(tree: dict, sources: list) -> dict:
    """tree with its keys, at every level, in the order they are first seen in `sources`."""
    seen = dict.fromkeys(key for source in sources if isinstance(source, dict) for key in source)
    keys = [key for key in seen if key in tree] + [key for key in tree if key not in seen]
    return {
        key: (
            _ordered(tree[key], [s.get(key) for s in sources if isinstance(s, dict)])
            if isinstance(tree[key], dict)
            else tree[key]
        )
        for key in keys
    }


def _holds(tree, path: list) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def parse_override(text: str) -> dict:
    """One `KEY=VALUE` as Snakemake's --config reads it (VALUE as YAML text; schema types come later)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise PcamflowError(f"override {text!r}: expected KEY=VALUE, e.g. seeds='[1,2]'")
    try:
        parsed = yaml.load(value, Loader=yaml.BaseLoader) if value else None
    except yaml.YAMLError:
        parsed = value
    return {key: parsed}


def load_workflow_config(
    files: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] = (),
    base: str | os.PathLike | None = None,
    override_option: str = "--set",
) -> dict:
    """The config a workflow run sees: the Snakefile's config/config.yaml, then each --configfile,
    then each --config KEY=VALUE (given here as `override_option` KEY=VALUE), validated with defaults
    filled in (layered_config)."""
    own = [(str(base), load_yaml(base))] if base is not None and Path(base).exists() else []
    given = [(str(path), load_yaml(path)) for path in files]
    given += [(f"{override_option} {text}", parse_override(text)) for text in overrides]
    return layered_config(own, given)


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
            data = yaml.load(fh, Loader=SAFE_LOADER)
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
