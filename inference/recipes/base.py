"""The contract between one model and the model-agnostic tools.

A recipe says how to build a model and its guide from a config dict, which data it trains on,
how to compute the training loss at a step (with the handlers that model needs), how it is
evaluated (its metrics, ``log p(x)``) and which figures to draw. The tools own everything else:
the trainer (``inference.svi``) the run directory, logs, checkpoints and ``--resume``; the
evaluation (``inference.evaluate``) restoring, choosing metrics and writing the report; the
figure and log-likelihood CLIs (``inference.figures``, ``inference.likelihood``) their output.
A new model subclasses :class:`Recipe` and is listed in ``inference.recipes.RECIPES``; no tool
names a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from inference.recipes.settings import check, run_defaults


@dataclass
class EvalOptions:
    """How :meth:`Recipe.evaluate` runs; each model reads the fields that apply to it."""

    #: held-out scenes to evaluate (and generations to draw)
    num_samples: int = 1000
    batch_size: int = 32
    device: Union[str, torch.device] = "cpu"
    #: importance samples per image for ``ll`` (None: :meth:`Recipe.log_likelihood`'s default)
    particles: Optional[int] = None
    progress: bool = True
    #: per-metric settings, e.g. ``{"d-steps": {"max_steps": 4}, "s-acc": {"cache": path}}``
    metric_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)


class Recipe:
    """Base class; subclasses override every method that raises."""

    #: the ``--model`` name
    name: str = ""
    #: allowed ``--dataset`` values; the first is the default
    datasets: Tuple[str, ...] = ()
    #: the ``--metrics`` names :meth:`evaluate` computes; all of them by default
    metrics: Tuple[str, ...] = ("ll",)
    #: settings whose default changed after runs were saved without them: the values those runs
    #: were trained with (:meth:`complete_config`); a setting absent here defaults as for a new run
    legacy_defaults: Dict = {}
    #: the dataclass of the recipe's settings (a :class:`~inference.recipes.settings.RecipeSettings`
    #: with bounds as field metadata) that :meth:`validate_config` checks
    settings: Optional[type] = None

    # ------------------------------------------------------------------ training
    def default_config(self, dataset: str) -> Dict:
        """All hyper-parameters for ``dataset`` as a JSON-serialisable dict (keys are the ``--set`` names)."""
        raise NotImplementedError

    def complete_config(self, config: Dict) -> Dict:
        """A saved run's ``config`` with the settings added since it was saved: the values it was
        trained with (:attr:`legacy_defaults`, else today's defaults). Applied wherever a
        checkpoint's config is read (``--resume``, restore, pretrained models)."""
        missing = {**run_defaults(self, config["dataset"]), **self.legacy_defaults}
        return {**{k: v for k, v in missing.items() if k not in config}, **config}

    def validate_config(self, config: Dict) -> None:
        """Raise ``ValueError`` naming the bad key when a value is invalid (called before anything
        is built). The default checks the types and bounds of :attr:`settings`; a recipe adds the
        checks that relate settings."""
        if self.settings is not None:
            check(self.settings, config)

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

    def batch_keys(self, config: Dict) -> Tuple[str, ...]:
        """The dataset keys that :meth:`loss` and :meth:`eval_loss` take. ``("image",)`` (the
        default): they get the image tensor; otherwise a dict of these keys' stacked tensors."""
        return ("image",)

    def loss(self, model, guide, images: torch.Tensor, step: int, config: Dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Differentiable training loss (per image, averaged over the batch) at ``step`` and floats to log.
        ``images`` is the batch of :meth:`batch_keys`."""
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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, guide, dataset, config: Dict, metrics: Sequence[str], options: EvalOptions) -> Dict:
        """Compute ``metrics`` (a subset of :attr:`metrics`) on the first ``options.num_samples``
        items of ``dataset``, model and guide in eval mode.

        Returns ``{"results": {...}, ...}``: ``results`` holds the report's numbers, the other
        keys what :meth:`evaluation_plots` draws. The default computes ``ll`` with
        :meth:`log_likelihood`.
        """
        from inference.evaluation.likelihood import evaluate_log_likelihood

        n = min(int(options.num_samples), len(dataset))
        out: Dict = {"results": {"num_scenes": n}}
        if "ll" in metrics:
            k = options.particles or int(config.get("ll_particles", 100))
            results, out["ll"] = evaluate_log_likelihood(lambda x: self.log_likelihood(model, guide, x, config, k), dataset, n,
                                                         options.batch_size, options.device, options.progress)
            out["results"].update(results, ll_particles=k)
        return out

    def evaluation_plots(self, evaluation: Dict, prefix: Path) -> List[Path]:
        """Draw :meth:`evaluate`'s output into files ``<prefix>_*.png``; return their paths."""
        from inference.evaluation.plots import log_likelihood_histogram

        return log_likelihood_histogram(evaluation, prefix)

    def log_likelihood(self, model, guide, images: torch.Tensor, config: Dict, num_particles: int = 100,
                       batch_particles: int = 10) -> torch.Tensor:
        """``log p(x)`` per image in nats, shape ``(B,)``: importance sampling with the guide as
        proposal (:func:`inference.likelihood.importance_log_likelihood`)."""
        from inference.likelihood import importance_log_likelihood

        return importance_log_likelihood(model, guide, images, num_particles=num_particles, batch_particles=batch_particles)

    def figures(self, model, guide, batch: Dict[str, torch.Tensor], out_dir: Path, step: int) -> List[Path]:
        """Write figures for a batch of held-out items into ``out_dir``; return their paths."""
        return []
