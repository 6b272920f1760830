"""Evaluate a trained run: restore its checkpoint, run the metrics of its recipe
(:meth:`~inference.recipes.base.Recipe.evaluate`), write a JSON of results and plots beside it
(``python -m inference.evaluate``; see docs/metrics.md). Nothing here names a model.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from inference.recipes import RECIPES, get_recipe
from inference.recipes.base import EvalOptions


class EvaluationError(ValueError):
    """Bad request: unknown metric, a metric that does not apply to the model, ..."""


def model_metrics() -> Dict[str, tuple]:
    """``--metrics`` names per model, from each recipe's :attr:`~inference.recipes.base.Recipe.metrics`."""
    return {name: get_recipe(name).metrics for name in RECIPES}


def parse_metrics(spec: Optional[Iterable[str]]) -> Optional[List[str]]:
    """``["ari,fg-ari", "msc"]`` -> ``["ari", "fg-ari", "msc"]``; unknown names raise EvaluationError."""
    if not spec:
        return None
    names = [n.strip().lower() for item in spec for n in str(item).split(",") if n.strip()]
    if not names:
        return None
    per_model = model_metrics()
    unknown = [n for n in names if not any(n in valid for valid in per_model.values())]
    if unknown:
        raise EvaluationError(f"unknown metric(s) {', '.join(unknown)}; valid metrics: "
                              + "; ".join(f"{m}: {', '.join(v)}" for m, v in per_model.items()))
    return list(dict.fromkeys(names))


def select_metrics(recipe, requested: Optional[List[str]]) -> List[str]:
    """``requested`` (None: all of ``recipe.metrics``), checked against the recipe's metrics."""
    valid = recipe.metrics
    if requested is None:
        return list(valid)
    wrong = [m for m in requested if m not in valid]
    if wrong:
        raise EvaluationError(f"metric(s) {', '.join(wrong)} do not apply to {recipe.name} models; "
                              f"valid for {recipe.name}: {', '.join(valid)}")
    return requested


def default_output(checkpoint: Path, split: str) -> Path:
    """``<run>/eval/metrics_<split>.json``."""
    from inference.training.checkpoint import run_dir

    return run_dir(checkpoint) / "eval" / f"metrics_{split}.json"


def open_run(path, device="cpu", overrides: Optional[Dict] = None):
    """Restore the checkpoint (or a run's latest one) at ``path`` in eval mode:
    ``(file, recipe, config, model, guide, step)``.

    Raises :class:`~inference.training.checkpoint.CheckpointError` for a missing, broken or
    unbuildable checkpoint and :class:`EvaluationError` for ``overrides`` the recipe rejects.
    """
    from inference.training.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, restore

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
            raise EvaluationError(f"--set: {e}") from None
        raise CheckpointError(f"{file}: cannot rebuild the model from the checkpoint's config: {e}") from None
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{file}: cannot rebuild the model from the checkpoint's config: {e}") from None
    return file, recipe, config, model.eval(), guide.eval(), step


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def evaluate(path, metrics: Optional[List[str]] = None, num_samples: Optional[int] = None, split: str = "test",
             out: Optional[Path] = None, device: str = "cpu", batch_size: int = 32, particles: Optional[int] = None,
             plots: bool = True, progress: bool = True, metric_options: Optional[Dict[str, Dict]] = None,
             overrides: Optional[Dict] = None) -> Dict:
    """Evaluate the checkpoint (or latest checkpoint of a run directory) at ``path``.

    Returns the JSON-ready report (also written to ``out``, default :func:`default_output`).
    Raises :class:`inference.training.checkpoint.CheckpointError` for missing/broken checkpoints
    and :class:`EvaluationError` for metric problems. ``metric_options`` are per-metric settings
    (:class:`~inference.recipes.base.EvalOptions`), e.g. ``{"d-steps": {"max_steps": 4}}`` for
    quick checks or ``{"s-acc": {"cache": folder, "settings": TrainSettings(...)}}`` for the
    S-Acc checker. ``overrides`` replace settings of the checkpoint's config (see ``restore``),
    e.g. ``{"num_objects": 4, "num_layers": 5}`` for ECON on 4-object scenes.
    """
    file, recipe, config, model, guide, step = open_run(path, device, overrides)
    chosen = select_metrics(recipe, metrics)
    t0 = time.time()
    dataset = recipe.make_dataset(config, split)
    n = len(dataset) if num_samples is None else min(int(num_samples), len(dataset))
    options = EvalOptions(num_samples=n, batch_size=batch_size, device=device, particles=particles, progress=progress,
                          metric_options=metric_options or {})
    with torch.no_grad():
        evaluation = recipe.evaluate(model, guide, dataset, config, chosen, options)
    report = dict(checkpoint=str(file), model=recipe.name, dataset=config.get("dataset"), step=step, split=split,
                  overrides=overrides or {},
                  metrics=chosen, num_samples=n, seconds=round(time.time() - t0, 1), results=evaluation["results"])
    out = Path(out) if out is not None else default_output(Path(file), split)
    out.parent.mkdir(parents=True, exist_ok=True)
    if plots:
        report["plots"] = [str(p) for p in recipe.evaluation_plots(evaluation, out.with_suffix(""))]
    report = _jsonable(report)
    out.write_text(json.dumps(report, indent=2))
    report["output"] = str(out)
    return report
