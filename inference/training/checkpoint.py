"""Checkpoints of a training run: writing (atomically), finding, loading and restoring them.

Layout: ``<run>/ckpt/step_XXXXXXXX.pt`` where the number is the count of optimiser updates done.
A checkpoint is a dict (loadable with ``torch.load(weights_only=True)``)::

    format, format_version, model, dataset, step, config,
    model_state, guide_state, optimizer_state, scheduler_state,
    rng {torch, cuda, numpy, python}, data {epoch, batch}, trainer {...}, versions {...}

Public helpers for other tools: :func:`find_checkpoint`, :func:`load_checkpoint`, :func:`restore`.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from inference.training.files import atomic_write

FORMAT = "pyro-scenes-checkpoint"
FORMAT_VERSION = 1
CKPT_DIR = "ckpt"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
REQUIRED_KEYS = ("model", "dataset", "step", "config", "model_state", "guide_state")


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, truncated, corrupt or not a pyro-scenes checkpoint."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def list_checkpoints(directory) -> List[Tuple[int, Path]]:
    """``(step, path)`` of the ``step_*.pt`` files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_checkpoint(path) -> Path:
    """A checkpoint file from a ``.pt`` path or a run directory (its latest ``ckpt/step_*.pt``)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    for directory in (path / CKPT_DIR, path):
        found = list_checkpoints(directory)
        if found:
            return found[-1][1]
    raise CheckpointError(f"{path}: no checkpoint found (expected {path / CKPT_DIR}/step_XXXXXXXX.pt)")


def run_dir(checkpoint) -> Path:
    """The run directory a checkpoint file belongs to (the parent of its ``ckpt/``, else its folder)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CKPT_DIR else checkpoint.parent


def _unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load`` failed on ``path``, in words (torch's own text asks to file an issue)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "not a zip archive as torch.save writes, so truncated, corrupt or not a checkpoint"
    refused = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    if refused:
        return f"it holds objects that a weights-only load refuses ({refused.group(1).split('. ')[0]})"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load and check a checkpoint file; any problem raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (pass a run directory to find_checkpoint first)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip errors, EOF, unpickling errors, ...
        raise CheckpointError(f"{path}: cannot read the checkpoint: {_unreadable(path, e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pyro-scenes checkpoint (no {FORMAT!r} marker)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ckpt.get('format_version')} is newer than this "
                              f"code understands ({FORMAT_VERSION}); update pyro-scenes")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def module_state(module: torch.nn.Module) -> Dict[str, Any]:
    """``module.state_dict()`` with torch's per-module ``_metadata`` kept only where its ``version``
    is a plain int (a module that defines its own ``_version`` attribute would otherwise make the
    checkpoint unpicklable)."""
    state = module.state_dict()
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        clean = type(meta)()
        for prefix, entry in meta.items():
            version = entry.get("version") if isinstance(entry, dict) else None
            clean[prefix] = {"version": version} if isinstance(version, int) and not isinstance(version, bool) else {}
        state._metadata = clean
    return state


def save_checkpoint(ckpt_dir, state: Dict[str, Any]) -> Path:
    """Write ``state`` (needs ``step``) as ``ckpt_dir/step_XXXXXXXX.pt`` atomically; return the path."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    path = Path(ckpt_dir) / checkpoint_name(int(state["step"]))
    try:
        return atomic_write(path, lambda f: torch.save(state, f))
    except (TypeError, AttributeError, pickle.PicklingError) as e:
        raise CheckpointError(f"{path}: cannot write the checkpoint: {e} (some state of the model, guide, "
                              f"optimizer or scheduler cannot be saved)") from None


def prune_checkpoints(ckpt_dir, keep: int) -> List[Path]:
    """Delete all but the ``keep`` newest checkpoints; return the deleted paths."""
    found = list_checkpoints(ckpt_dir)
    doomed = [p for _, p in found[:-keep]] if keep > 0 else [p for _, p in found]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def load_module_states(model, guide, ckpt: Dict[str, Any]) -> None:
    """Load ``model_state`` and ``guide_state`` (strict: a key mismatch is an error naming the keys)."""
    for name, module in (("model", model), ("guide", guide)):
        try:
            module.load_state_dict(ckpt[f"{name}_state"])
        except RuntimeError as e:
            raise CheckpointError(f"the checkpoint's {name} state does not fit the {name} built from its "
                                  f"config: {e}") from None


def override_config(recipe, config, overrides=None):
    """``config`` with ``overrides`` applied and validated by ``recipe``; keys the config lacks and
    values the recipe rejects raise ``ValueError``."""
    if not overrides:
        return config
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for model {recipe.name!r}")
    config = {**config, **overrides}
    recipe.validate_config(config)
    return config


def restore(path, device="cpu", overrides=None):
    """Rebuild a trained model and guide: ``(recipe, config, model, guide, step)``.

    ``overrides`` replace settings of the checkpoint's config before building (e.g. ECON's
    ``num_layers`` and ``num_objects`` to evaluate on scenes with more objects); keys the
    config lacks and values the recipe rejects raise ``ValueError``.

    ``path`` is a checkpoint file or a run directory (latest checkpoint). The recipe named in the
    checkpoint builds model and guide from the checkpoint's config on ``device`` (Pyro's param
    store is cleared first) and their states are loaded. Modules are left in training mode; call
    ``.eval()`` as needed.
    """
    import pyro

    import inference.recipes as recipes

    file = find_checkpoint(path)
    device = torch.device(device)
    ckpt = load_checkpoint(file, map_location=device)
    recipe = recipes.get_recipe(ckpt["model"])
    config = override_config(recipe, recipe.complete_config(dict(ckpt["config"])), overrides)
    pyro.clear_param_store()
    model, guide = recipe.build(config, device)
    try:
        load_module_states(model, guide, ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{file}: {e}") from None
    return recipe, config, model, guide, int(ckpt["step"])
