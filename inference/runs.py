"""A trained run for the tools (evaluation, figures, log-likelihood): its checkpoint restored,
model and guide in eval mode, with one error per kind of problem."""
from __future__ import annotations

from typing import Dict, Optional

from inference.recipes import RECIPES
from inference.training.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, restore


class SettingsError(ValueError):
    """Settings (``--set``) that the run's recipe rejects."""


def is_pretrained(path) -> bool:
    """Whether ``path`` names a shipped pretrained model (:func:`inference.pretrained.names`)."""
    from inference import pretrained

    return isinstance(path, str) and path in pretrained.names()


def open_pretrained(name: str, device="cpu", overrides: Optional[Dict] = None):
    """:func:`open_run` for the shipped pretrained model ``name``."""
    from inference import pretrained

    record = pretrained.info(name)
    try:
        recipe, config, model, guide = pretrained.build(record, device, overrides)
    except ValueError as e:
        raise SettingsError(f"--set: {e}") from None
    return pretrained.path(name), recipe, config, model, guide, int(record["step"])


def open_run(path, device="cpu", overrides: Optional[Dict] = None):
    """Restore the checkpoint (or a run's latest one) at ``path`` in eval mode:
    ``(file, recipe, config, model, guide, step)``; ``overrides`` replace settings of its config.
    ``path`` may also name a pretrained model (``econ-sprites-unique``).

    Raises :class:`~inference.training.checkpoint.CheckpointError` for a missing, broken or
    unbuildable checkpoint and :class:`SettingsError` for ``overrides`` the recipe rejects.
    """
    if is_pretrained(path):
        return open_pretrained(path, device, overrides)
    file = find_checkpoint(path)
    name = load_checkpoint(file).get("model")  # validates the file before any building
    if name not in RECIPES:
        raise CheckpointError(f"{file}: a checkpoint of model {name!r}, which this library does not know "
                              f"(models: {', '.join(RECIPES)})")
    try:
        recipe, config, model, guide, step = restore(file, device=device, overrides=overrides)
    except CheckpointError:
        raise
    except ValueError as e:
        if overrides:  # the checkpoint rebuilt fine before: the overrides are the bad input
            raise SettingsError(f"--set: {e}") from None
        raise CheckpointError(f"{file}: cannot rebuild the model from the checkpoint's config: {e}") from None
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{file}: cannot rebuild the model from the checkpoint's config: {e}") from None
    return file, recipe, config, model.eval(), guide.eval(), step
