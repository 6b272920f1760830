"""Resolve the hyper-parameters of a run: defaults < ``--config`` < explicit flags < ``--set``.

The resolved config is one flat, JSON-serialisable dict. It holds the trainer's own keys
(:class:`~inference.recipes.settings.TrainerSettings`), every key of
``recipe.default_config(dataset)`` (a recipe may override a trainer default, e.g. ``batch_size``),
and the reserved keys ``model`` and ``dataset``. The flags of ``inference.svi`` are the fields
declared with a ``flag`` (:data:`~inference.recipes.settings.FLAGS`).
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from inference.recipes.settings import (
    FLAGS, ConfigError, RecipeSettings, TrainerSettings, check, defaults, flag_name, run_defaults,
)

#: the trainer's own keys and their defaults (:class:`~inference.recipes.settings.TrainerSettings`)
TRAINER_DEFAULTS: Dict[str, Any] = defaults(TrainerSettings)

#: keys set by ``--model`` / ``--dataset`` only
RESERVED_KEYS = ("model", "dataset")

#: the config key listing the settings changed by ``--resume --amend`` (``{step, key, from, to}``)
AMENDMENTS_KEY = "amendments"

#: keys that may change when a run is resumed (they do not change the numbers of a step)
RESUMABLE_KEYS = tuple(f.name for f in fields(TrainerSettings) if f.metadata.get("resumable"))

#: config key -> its flag (``batch_size`` -> ``--batch-size``), for the settings that have one
FLAG_NAME = {key: flag_name(key) for key in FLAGS}


def parse_value(text: str) -> Any:
    """``--set`` values: JSON if they parse (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``null``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_set(items: Iterable[str]) -> Dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; a malformed item raises :class:`ConfigError`."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = parse_value(value)
    return out


def load_config_file(path) -> Dict[str, Any]:
    """Read a ``--config`` JSON object (a run's ``config.json`` works too)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of KEY: VALUE, got {type(data).__name__}")
    return data


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` has the JSON type of ``default`` (an int is accepted for a float).

    ``null`` is accepted for any key and any value for a key whose default is ``null``; the
    recipe's ``validate_config`` decides whether that is meaningful.
    """
    want, got = _json_kind(default), _json_kind(value)
    if want == "null" or got == "null" or want == got:
        return value
    if want == "float" and got == "int":
        return float(value)
    raise ConfigError(f"{source} {key}={value!r}: expected {want} (default {json.dumps(default)}), got {got}")


def check_keys(keys: Iterable[str], valid: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid keys: {', '.join(sorted(valid))}")


def defaults_for(recipe, dataset: str) -> Dict[str, Any]:
    """Trainer defaults overlaid with the recipe's defaults for ``dataset`` (reserved keys excluded)."""
    return {k: v for k, v in run_defaults(recipe, dataset).items() if k not in RESERVED_KEYS}


def merge(base: Dict[str, Any], overrides: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """``base`` updated with ``overrides``; keys must exist in ``base`` and values match its types."""
    check_keys(overrides, base, source)
    out = dict(base)
    for key, value in overrides.items():
        out[key] = coerce(key, value, base[key], source)
    return out


def resolve_config(recipe, dataset: str, file_config: Optional[Mapping[str, Any]] = None,
                   flags: Optional[Mapping[str, Any]] = None,
                   sets: Optional[Mapping[str, Any]] = None, file_label: str = "--config") -> Dict[str, Any]:
    """defaults(dataset) < ``file_config`` < ``flags`` (config key -> value, only those given) < ``sets``."""
    config = defaults_for(recipe, dataset)
    file_config = {k: v for k, v in (file_config or {}).items() if k not in RESERVED_KEYS}
    config = merge(config, file_config, file_label)
    for key, value in (flags or {}).items():
        if key not in config:
            raise ConfigError(f"{FLAG_NAME[key]}: model {recipe.name!r} has no {key!r} setting")
        config[key] = coerce(key, value, config[key], FLAG_NAME.get(key, key))
    reserved = [k for k in (sets or {}) if k in RESERVED_KEYS]
    if reserved:
        raise ConfigError(f"--set {reserved[0]}: use --{reserved[0]} instead")
    config = merge(config, sets or {}, "--set")
    config["model"] = recipe.name
    config["dataset"] = dataset
    return config


def validate_trainer_config(config: Mapping[str, Any]) -> None:
    """The trainer's own checks (its keys, and those of :class:`RecipeSettings` the config has);
    the recipe's ``validate_config`` runs after these."""
    check(TrainerSettings, config)
    check(RecipeSettings, config, partial=True)
    try:
        json.dumps(dict(config), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config is not JSON-serialisable: {e}") from None


def resume_overrides(run_config: Mapping[str, Any], *sources, amend_at: Optional[int] = None) -> Dict[str, Any]:
    """Apply ``(label, {key: value})`` sources (--config file, flags, --set; later wins) to a resumed
    run's config.

    Only :data:`RESUMABLE_KEYS` may change; any other key whose value differs raises
    :class:`ConfigError` (changing it would not continue the same run) unless ``amend_at`` (the
    checkpoint's step) is given: then every setting may change and each change is appended to
    ``config["amendments"]`` as ``{"step", "key", "from", "to"}``, so the run says how it was made.
    """
    out = dict(run_config)
    valid = {k: None for k in run_config if k not in RESERVED_KEYS and k != AMENDMENTS_KEY}
    requested: Dict[str, Any] = {}
    for label, values in sources:
        values = {k: v for k, v in values.items() if k not in RESERVED_KEYS}
        if label != "flags":
            check_keys(values, valid, label)
        for key, value in values.items():
            if key not in valid:
                raise ConfigError(f"{FLAG_NAME.get(key, key)}: the run has no {key!r} setting")
            requested[key] = coerce(key, value, run_config[key], label if label != "flags" else FLAG_NAME[key])
    for key, value in requested.items():
        if value == run_config[key]:
            continue
        if key not in RESUMABLE_KEYS and amend_at is not None:
            out[AMENDMENTS_KEY] = list(out.get(AMENDMENTS_KEY, [])) + [
                {"step": amend_at, "key": key, "from": run_config[key], "to": value}]
        elif key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"{FLAG_NAME.get(key, key)}: cannot change {key!r} when resuming (the run has "
                f"{json.dumps(run_config[key])}, asked {json.dumps(value)}); only "
                f"{', '.join(RESUMABLE_KEYS)} may change; start a new --out for other settings, or add "
                f"--amend to change it from here on (recorded in config.json under {AMENDMENTS_KEY!r})")
        out[key] = value
    return out
