"""The model-agnostic trainer behind ``python -m inference.svi`` (see ``docs/training.md``).

Helpers for other tools (evaluation CLIs, scripts)::

    from inference.training import restore, find_checkpoint, load_checkpoint, CheckpointError
    recipe, config, model, guide, step = restore("runs/econ-sprites-unique")
"""
from inference.training.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, restore

__all__ = ["CheckpointError", "find_checkpoint", "load_checkpoint", "restore"]
