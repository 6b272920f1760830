"""Typed settings: a dataclass of a recipe's settings (and one of the trainer's) whose fields carry
their bounds, and one check for all of them (docs/training.md, "Settings and their precedence").

A run's config stays one flat JSON dict on disk; the dataclasses only declare its keys::

    @dataclass(kw_only=True)
    class MySettings(RecipeSettings):
        latent: int = setting(2, ge=1)
        sigma: Optional[float] = setting(None, gt=0)   # null allowed

    check(MySettings, config)   # ConfigError: "latent=0: must be a positive integer"
"""
from __future__ import annotations

import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Mapping, Optional


class ConfigError(ValueError):
    """A bad setting; the message names the key (or file) and the problem."""


def setting(default: Any = MISSING, *, factory: Optional[Callable[[], Any]] = None, ge=None, gt=None, lt=None,
            choices=None, length: Optional[int] = None, flag: Optional[str] = None, resumable: bool = False):
    """A settings field. ``ge``/``gt``/``lt``: bounds of a number (of each item of a list);
    ``choices``: the allowed strings; ``length``: of a list; ``flag``: the help of its own
    command-line flag (``--batch-size`` sets ``batch_size``); ``resumable``: it may change on
    ``--resume`` (it does not change the numbers of a step)."""
    meta = dict(ge=ge, gt=gt, lt=lt, choices=choices, length=length, flag=flag, resumable=resumable)
    meta = {k: v for k, v in meta.items() if v is not None and v is not False}
    if isinstance(default, list):
        factory, default = (lambda items=tuple(default): list(items)), MISSING
    return field(default=default, default_factory=factory or MISSING, metadata=meta)


def flag_name(key: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def label(f) -> str:
    """How errors name a setting: its flag if it has one, else its key."""
    return flag_name(f.name) if "flag" in f.metadata else f.name


@dataclass(kw_only=True)
class TrainerSettings:
    """The keys the trainer itself reads (docs/training.md); a recipe's ``default_config`` may
    override their defaults."""

    steps: int = setting(1000, ge=1, resumable=True,
                         flag="Total optimiser steps of the run (with --resume: the new total).")
    batch_size: int = setting(32, ge=1, flag="Images per step.")
    seed: int = setting(0, ge=0, flag="Seed of all RNGs, of the data order and of model initialisation.")
    workers: int = setting(0, ge=0, resumable=True, flag="DataLoader worker processes.")
    log_every: int = setting(10, ge=1, resumable=True, flag="Write a log.jsonl line every N steps.")
    val_every: int = setting(500, ge=0, flag="Validation loss (and plateau-scheduler step) every N steps (0: only at the end).")
    #: validation items the validation loss averages over
    val_items: int = setting(128, ge=1)
    ckpt_every: int = setting(500, ge=0, resumable=True, flag="Checkpoint every N steps (0: only at the end).")
    keep: int = setting(3, ge=1, resumable=True, flag="Checkpoints kept (the newest).")
    figures_every: int = setting(0, ge=0, resumable=True, flag="Figures every N steps (0: only at the end).")
    deterministic: bool = setting(True, resumable=True,
                                  flag="torch.use_deterministic_algorithms, warn-only (needed for "
                                       "bit-exact --resume of conv models on a multi-threaded CPU).")
    tensorboard: bool = setting(False, resumable=True,
                                flag="Also write TensorBoard event files (losses, validation metrics, figures, "
                                     "hyper-parameters) in RUN/tensorboard; needs pip install -e \".[tensorboard]\".")


@dataclass(kw_only=True)
class RecipeSettings:
    """The settings every recipe has, each with a flag; each recipe gives their defaults.
    A recipe's settings dataclass subclasses this one."""

    lr: float = setting(gt=0, flag="Learning rate.")
    image_size: int = setting(ge=1, flag="Image side in pixels.")
    num_train: int = setting(ge=1, flag="Training-set size.")


def field_type(cls, f):
    """``(type, nullable)`` of field ``f`` of ``cls``: ``Optional[int]`` -> ``(int, True)``."""
    kind = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is typing.Union:
        return args[0], True
    return kind, False


#: the settings with a flag of their own, in ``--help`` order: key -> (type, help)
FLAGS = {f.name: (field_type(cls, f)[0], f.metadata["flag"])
         for cls in (TrainerSettings, RecipeSettings) for f in fields(cls) if "flag" in f.metadata}


def _adjective(meta) -> str:
    if meta.get("gt") == 0 or meta.get("ge") == 1:
        return "positive "
    return "non-negative " if meta.get("ge") == 0 else ""


def describe(kind, meta, nullable: bool) -> str:
    """What a field's value must be, e.g. "a positive integer", "a list of 4 positive numbers"."""
    if kind is bool:
        text = "true or false"
    elif "choices" in meta:
        text = "one of " + ", ".join(meta["choices"])
    elif kind is str:
        text = "a string"
    else:
        below = f" below {meta['lt']}" if "lt" in meta else ""
        if kind in (int, float):
            words = _adjective(meta) + ("integer" if kind is int else "number")
            text = ("an " if words[0] in "aeiou" else "a ") + words + below
        else:
            text = f"a list of {meta['length']} {_adjective(meta)}numbers{below}"
    return text + (" or null" if nullable else "")


def _number(value, kind, meta) -> bool:
    """A finite number of ``kind`` (an int counts as a float) within the bounds of ``meta``."""
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        return False
    return (math.isfinite(value) and ("ge" not in meta or value >= meta["ge"])
            and ("gt" not in meta or value > meta["gt"]) and ("lt" not in meta or value < meta["lt"]))


def valid(kind, meta, nullable: bool, value) -> bool:
    """Whether ``value`` has the field's type and lies within its bounds."""
    if value is None:
        return nullable
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return isinstance(value, str) and ("choices" not in meta or value in meta["choices"])
    if kind in (int, float):
        return _number(value, kind, meta)
    item = typing.get_args(kind)[0]  # List[float]
    return (isinstance(value, list) and len(value) == meta.get("length", len(value))
            and all(_number(v, item, meta) for v in value))


def check(cls, config: Mapping[str, Any], partial: bool = False) -> None:
    """Raise :class:`ConfigError` naming the first setting of ``config`` that breaks its field of
    ``cls`` (type and bounds); every field must be in ``config`` unless ``partial``."""
    for f in fields(cls):
        if partial and f.name not in config:
            continue
        kind, nullable = field_type(cls, f)
        value = config[f.name]
        if not valid(kind, f.metadata, nullable, value):
            raise ConfigError(f"{label(f)}={value!r}: must be {describe(kind, f.metadata, nullable)}")


def defaults(cls, **values) -> dict:
    """The settings of ``cls(**values)`` as a flat dict."""
    return asdict(cls(**values))


def run_defaults(recipe, dataset: str) -> dict:
    """Every setting of a run of ``recipe`` on ``dataset``: the trainer's defaults overlaid with
    ``recipe.default_config(dataset)``."""
    return {**defaults(TrainerSettings), **recipe.default_config(dataset)}
