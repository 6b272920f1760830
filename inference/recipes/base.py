"""The contract between the model-agnostic trainer (``inference.svi``) and one model.

A recipe says how to build a model and its guide from a config dict, which data it trains on,
how to compute the training loss at a step (with the handlers that model needs) and which
figures to draw. The trainer owns everything else: the run directory, the progress bar, logs,
checkpoints, ``--resume``, devices and error handling.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch


class Recipe:
    """Base class; subclasses override every method that raises."""

    #: the ``--model`` name
    name: str = ""
    #: allowed ``--dataset`` values; the first is the default
    datasets: Tuple[str, ...] = ()

    def default_config(self, dataset: str) -> Dict:
        """All hyper-parameters for ``dataset`` as a JSON-serialisable dict (keys are the ``--set`` names)."""
        raise NotImplementedError

    def validate_config(self, config: Dict) -> None:
        """Raise ``ValueError`` naming the bad key when a value is invalid (called before anything is built)."""

    def build(self, config: Dict, device: torch.device) -> Tuple[torch.nn.Module, torch.nn.Module]:
        """Return ``(model, guide)`` on ``device``."""
        raise NotImplementedError

    def make_dataset(self, config: Dict, split: str) -> torch.utils.data.Dataset:
        """The dataset for ``split`` in {"train", "val", "test"}; items are dicts with an ``image`` key."""
        raise NotImplementedError

    def make_optimizer(self, params, config: Dict) -> torch.optim.Optimizer:
        raise NotImplementedError

    def make_scheduler(self, optimizer: torch.optim.Optimizer, config: Dict):
        """An LR scheduler or None. A ``ReduceLROnPlateau`` is stepped with the validation loss."""
        return None

    def grad_clip_norm(self, config: Dict) -> Optional[float]:
        """Global gradient-norm clip, or None."""
        return None

    def loss(self, model, guide, images: torch.Tensor, step: int, config: Dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Differentiable training loss (per image, averaged over the batch) at ``step`` and floats to log."""
        raise NotImplementedError

    def eval_loss(self, model, guide, images: torch.Tensor, step: int, config: Dict) -> float:
        """Validation loss (no gradients needed); defaults to :meth:`loss`."""
        with torch.no_grad():
            return float(self.loss(model, guide, images, step, config)[0])

    def validation_metrics(self, model, guide, dataset, step: int, config: Dict) -> Dict[str, float]:
        """Numbers that show learning (FG-ARI, specialisation, box AP, ...) on held-out ``dataset``.

        Called at every validation with the model and guide in eval mode; the trainer writes the
        result under ``"metrics"`` in ``val.jsonl`` and plots every scalar in ``metrics.png``.
        Values are floats, or lists of floats (one curve each).
        """
        return {}

    def figures(self, model, guide, batch: Dict[str, torch.Tensor], out_dir: Path, step: int) -> List[Path]:
        """Write figures for a batch of held-out items into ``out_dir``; return their paths."""
        return []
