"""Evaluate a trained run: restore its checkpoint, run the metrics that apply to the model, write
a JSON of results and plots beside it (``python -m inference.evaluate``; see docs/metrics.md)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from .econ import METRICS as ECON_METRICS
from .gnm import METRICS as GNM_METRICS

#: metrics per model (``--metrics`` names)
MODEL_METRICS = {"econ": ECON_METRICS, "gnm": GNM_METRICS}
ALL_METRICS = tuple(dict.fromkeys(ECON_METRICS + GNM_METRICS))


class EvaluationError(ValueError):
    """Bad request: unknown metric, a metric that does not apply to the model, ..."""


def parse_metrics(spec: Optional[Iterable[str]]) -> Optional[List[str]]:
    """``["ari,fg-ari", "msc"]`` -> ``["ari", "fg-ari", "msc"]``; unknown names raise EvaluationError."""
    if not spec:
        return None
    names = [n.strip().lower() for item in spec for n in str(item).split(",") if n.strip()]
    if not names:
        return None
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise EvaluationError(f"unknown metric(s) {', '.join(unknown)}; valid metrics: "
                              + "; ".join(f"{m}: {', '.join(v)}" for m, v in MODEL_METRICS.items()))
    return list(dict.fromkeys(names))


def select_metrics(model_name: str, requested: Optional[List[str]]) -> List[str]:
    if model_name not in MODEL_METRICS:
        raise EvaluationError(f"no evaluator for model {model_name!r}; evaluators exist for {', '.join(MODEL_METRICS)}")
    valid = MODEL_METRICS[model_name]
    if requested is None:
        return list(valid)
    wrong = [m for m in requested if m not in valid]
    if wrong:
        raise EvaluationError(f"metric(s) {', '.join(wrong)} do not apply to {model_name} models; "
                              f"valid for {model_name}: {', '.join(valid)}")
    return requested


def default_output(checkpoint: Path, split: str) -> Path:
    """``<run>/eval/metrics_<split>.json`` (the run is the checkpoint's ``ckpt/``'s parent)."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "ckpt" else checkpoint.parent
    return run / "eval" / f"metrics_{split}.json"


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
             plots: bool = True, progress: bool = True, checker_cache=None, checker_settings=None,
             dsteps_options: Optional[Dict] = None, overrides: Optional[Dict] = None) -> Dict:
    """Evaluate the checkpoint (or latest checkpoint of a run directory) at ``path``.

    Returns the JSON-ready report (also written to ``out``, default :func:`default_output`).
    Raises :class:`inference.training.checkpoint.CheckpointError` for missing/broken checkpoints
    and :class:`EvaluationError` for metric problems. ``checker_cache`` / ``checker_settings``
    (a :class:`~inference.metrics.structure.TrainSettings`) choose the S-Acc checker;
    ``dsteps_options`` override D-Steps protocol values (e.g. ``max_steps`` for quick checks).
    ``overrides`` replace settings of the checkpoint's config (see ``restore``), e.g.
    ``{"num_objects": 4, "num_layers": 5}`` for ECON on 4-object scenes.
    """
    from inference.training.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, restore

    file = find_checkpoint(path)
    ckpt_model = load_checkpoint(file).get("model")  # validates the file before any building
    if ckpt_model not in MODEL_METRICS:
        raise CheckpointError(f"{file}: a checkpoint of model {ckpt_model!r}, which has no evaluator "
                              f"(evaluators: {', '.join(MODEL_METRICS)})")
    chosen = select_metrics(str(ckpt_model), metrics)
    try:
        recipe, config, model, guide, step = restore(file, device=device, overrides=overrides)
    except CheckpointError:
        raise
    except ValueError as e:
        if overrides:  # the checkpoint rebuilt fine before: the overrides are the bad input
            raise EvaluationError(f"--set: {e}") from None
        raise CheckpointError(f"{file}: cannot rebuild the model from the checkpoint's config: {e}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{file}: cannot rebuild the model from the checkpoint's config: {e}") from None
    t0 = time.time()
    dataset = recipe.make_dataset(config, split)
    n = len(dataset) if num_samples is None else min(int(num_samples), len(dataset))
    if recipe.name == "econ":
        from .econ import econ_plots, evaluate_econ
        raw = evaluate_econ(model, guide, dataset, chosen, n, batch_size, device, progress)
        plot_fn = econ_plots
    else:
        from .gnm import evaluate_gnm, gnm_plots
        raw = evaluate_gnm(recipe, config, model, guide, dataset, chosen, n, batch_size, device, particles,
                           checker_cache=checker_cache, checker_settings=checker_settings,
                           dsteps_options=dsteps_options, progress=progress)
        plot_fn = gnm_plots
    report = dict(checkpoint=str(file), model=recipe.name, dataset=config.get("dataset"), step=step, split=split,
                  overrides=overrides or {},
                  metrics=chosen, num_samples=n, seconds=round(time.time() - t0, 1), results=raw["results"])
    out = Path(out) if out is not None else default_output(Path(file), split)
    out.parent.mkdir(parents=True, exist_ok=True)
    if plots:
        prefix = out.with_suffix("")
        report["plots"] = [str(p) for p in plot_fn(raw, prefix)]
    report = _jsonable(report)
    out.write_text(json.dumps(report, indent=2))
    report["output"] = str(out)
    return report
