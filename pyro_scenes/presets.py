"""Named configurations: the one lookup every model's ``preset(name, **overrides)`` uses."""
from __future__ import annotations

from typing import Mapping, TypeVar

C = TypeVar("C")


def pick(presets: Mapping[str, C], name: str, model: str, **overrides) -> C:
    """``presets[name]`` with keyword ``overrides`` (the config's ``replace``), validated;
    ``ValueError`` naming ``model`` and the valid names for an unknown ``name``."""
    try:
        cfg = presets[name]
    except KeyError:
        raise ValueError(f"unknown {model} preset {name!r}; choose one of {', '.join(presets)}") from None
    cfg = cfg.replace(**overrides)
    cfg.validate()
    return cfg
