"""Trained models that ship with the library: ``model, guide = pretrained.load(name)``.

Each model is one file ``inference/pretrained/models/<name>.pt`` holding the recipe name, the
run's config, the model and guide weights (no optimiser state), the step and the command that
trained it. ``python -m inference.pretrained export RUN NAME --command "..."`` writes one from a
training run; ``python -m inference.pretrained list`` lists them with their commands;
``python -m inference.pretrained unpack NAME OUT`` makes a run of one, to fine-tune with
``python -m inference.svi --resume --amend --out OUT``.

    from inference import pretrained
    pretrained.names()                                   # ['econ-sprites-random', 'econ-sprites-unique', ...]
    model, guide = pretrained.load("econ-sprites-unique")
    images = model(batch_size=8)                         # a Pyro program: trace, condition, do, Predictive
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

FORMAT = "pyro-scenes-pretrained"
MODELS_DIR = Path(__file__).resolve().parent / "models"


class PretrainedError(ValueError):
    """An unknown name, or a file that is not a pretrained model of this library."""


def names() -> List[str]:
    """The names of the shipped models, sorted."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.pt"))


def path(name: str) -> Path:
    """The file of model ``name``; an unknown name raises :class:`PretrainedError` listing the known ones."""
    if not isinstance(name, str) or not (MODELS_DIR / f"{name}.pt").is_file():
        raise PretrainedError(f"unknown pretrained model {name!r}; available: {', '.join(names()) or 'none'}")
    return MODELS_DIR / f"{name}.pt"


def info(name: str) -> Dict[str, Any]:
    """The stored record of ``name`` without building it: recipe, config, step, command, metrics."""
    try:
        record = torch.load(path(name), map_location="cpu", weights_only=True)
    except PretrainedError:
        raise
    except Exception as e:
        raise PretrainedError(f"{path(name)}: cannot read the pretrained model: {str(e).splitlines()[0]}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PretrainedError(f"{path(name)}: not a pyro-scenes pretrained model")
    return record


def load(name: str, device="cpu", overrides: Dict[str, Any] = None) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """Build model ``name`` and its guide with their trained weights, in eval mode, on ``device``.

    ``overrides`` replace settings of its config (``ValueError`` for unknown keys and rejected
    values). Pyro's parameter store is cleared first (the recipes register their modules by name).
    """
    return build(info(name), device, overrides)[2:]


def build(record: Dict[str, Any], device="cpu", overrides: Dict[str, Any] = None):
    """:func:`load` from a record of :func:`info`: ``(recipe, config, model, guide)``."""
    import pyro

    from inference.recipes import get_recipe
    from inference.training.checkpoint import override_config

    recipe = get_recipe(record["model"])
    config = override_config(recipe, recipe.complete_config(dict(record["config"])), overrides)
    pyro.clear_param_store()
    model, guide = recipe.build(config, torch.device(device))
    model.load_state_dict(record["model_state"])
    guide.load_state_dict(record["guide_state"])
    return recipe, config, model.eval(), guide.eval()


def export(run, name: str, command: str, metrics: Dict[str, Any] = None) -> Path:
    """Write the latest checkpoint of training run ``run`` (a directory or checkpoint file) as
    pretrained model ``name``: weights and config only, with the ``command`` that trained it."""
    from inference.training.checkpoint import find_checkpoint, load_checkpoint
    from inference.training.files import atomic_write

    if not name or "/" in name or name.startswith("."):
        raise PretrainedError(f"bad pretrained model name {name!r}")
    ckpt = load_checkpoint(find_checkpoint(run))
    record = {"format": FORMAT, "model": ckpt["model"], "config": ckpt["config"], "step": int(ckpt["step"]),
              "model_state": ckpt["model_state"], "guide_state": ckpt["guide_state"], "command": command,
              "metrics": metrics or {}}
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    return atomic_write(MODELS_DIR / f"{name}.pt", lambda f: torch.save(record, f))


def unpack(name: str, out) -> Path:
    """Turn pretrained model ``name`` into a training run in directory ``out``, to fine-tune it with
    ``python -m inference.svi --resume --amend --out OUT --set KEY=VALUE --steps N``: its config and
    a checkpoint at its step with its weights. The file holds no optimiser, RNG or data state, so
    the continuation starts a fresh optimiser (its running averages build up again) and fresh noise
    and data order: a fine-tuning, not a bit-exact continuation of the original run."""
    import json

    from inference.training.checkpoint import save_checkpoint
    from inference.training.files import atomic_write_text
    from inference.training.rundir import RunDir

    record, run = info(name), RunDir(Path(out))
    if run.holds_run():
        raise PretrainedError(f"{run.path} already holds a run ({run.describe()}); choose another directory")
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    config = dict(record["config"])
    atomic_write_text(run.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return save_checkpoint(run.ckpt_dir, {
        "model": record["model"], "dataset": config["dataset"], "step": int(record["step"]), "config": config,
        "model_state": record["model_state"], "guide_state": record["guide_state"]})


__all__ = ["PretrainedError", "export", "info", "load", "names", "path", "unpack"]
