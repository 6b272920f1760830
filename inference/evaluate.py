"""Evaluate a trained run with the metrics of its model's recipe: :func:`evaluate` and its command
line (protocols: docs/metrics.md). Nothing here names a model.

    python -m inference.evaluate RUN_DIR_OR_CHECKPOINT_OR_PRETRAINED_NAME [--metrics ari,fg-ari] [--num-samples N]
        [--split test] [--out FILE.json] [--device cpu]

Default: all metrics of the checkpoint's model. Writes a JSON of results (default
``<run>/eval/metrics_<split>.json``) and plots beside it. Exits with status 1 on a missing,
unreadable or incompatible checkpoint and 2 on bad options (e.g. an unknown metric).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import click
import torch

from inference.devices import DEVICE_HELP, device_option
from inference.recipes import RECIPES, get_recipe
from inference.recipes.base import EvalOptions
from inference.runs import SettingsError, is_pretrained, open_run
from inference.training.checkpoint import CheckpointError, run_dir


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
    return run_dir(checkpoint) / "eval" / f"metrics_{split}.json"


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
    and :class:`EvaluationError` for metric and ``overrides`` problems. ``metric_options`` are
    per-metric settings (:class:`~inference.recipes.base.EvalOptions`), e.g. ``{"d-steps": {"max_steps": 4}}`` for
    quick checks or ``{"s-acc": {"cache": folder, "settings": TrainSettings(...)}}`` for the
    S-Acc checker. ``overrides`` replace settings of the checkpoint's config (see ``restore``),
    e.g. ``{"num_objects": 4, "num_layers": 5}`` for ECON on 4-object scenes.
    """
    try:
        file, recipe, config, model, guide, step = open_run(path, device, overrides)
    except SettingsError as e:
        raise EvaluationError(str(e)) from None
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
    if out is None:  # a pretrained model's evaluation goes to ./eval/<name>/, not into the package
        out = Path("eval") / str(path) / f"metrics_{split}.json" if is_pretrained(path) else default_output(Path(file), split)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if plots:
        report["plots"] = [str(p) for p in recipe.evaluation_plots(evaluation, out.with_suffix(""))]
    report = _jsonable(report)
    out.write_text(json.dumps(report, indent=2))
    report["output"] = str(out)
    return report


METRICS_HELP = "; ".join(f"{model}: {', '.join(metrics)}" for model, metrics in model_metrics().items())


@click.command(help=f"Evaluate the run, checkpoint or pretrained model (by name) PATH with the metrics of its model. "
                    f"Metrics per model: {METRICS_HELP}.",
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", type=click.Path())
@click.option("--metrics", "-m", multiple=True, help="comma-separated metric names (default: all for the model)")
@click.option("--num-samples", "-n", type=click.IntRange(min=1), default=None,
              help="held-out scenes (and generations) to evaluate [default: the whole split]")
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]), help="held-out split")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="JSON file to write [default: <run>/eval/metrics_<split>.json]")
@click.option("--device", default="cpu", show_default=True, callback=device_option, help=DEVICE_HELP)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="scenes per forward pass")
@click.option("--particles", default=None, type=click.IntRange(min=1), help="importance samples for LL [default: config, 100]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a setting of the checkpoint's config (repeatable), e.g. ECON on 4-object scenes: "
                   "--set num_objects=4 --set num_layers=5")
@click.option("--no-plots", is_flag=True, help="write only the JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
def cli(path, metrics, num_samples, split, out, device, batch_size, particles, sets, no_plots, quiet):
    from inference.training.config import ConfigError, parse_set

    try:
        overrides = parse_set(sets)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--set")
    try:
        chosen = parse_metrics(metrics)
    except EvaluationError as e:
        raise click.BadParameter(str(e), param_hint="--metrics")
    try:
        report = evaluate(path, chosen, num_samples, split, out, device, batch_size, particles,
                          plots=not no_plots, progress=not quiet, overrides=overrides)
    except CheckpointError as e:
        raise click.ClickException(str(e))
    except EvaluationError as e:
        raise click.UsageError(str(e))
    click.echo(f"{report['model']} {report['dataset']} step {report['step']} ({report['num_samples']} {split} scenes):")
    for k, v in report["results"].items():
        if isinstance(v, (int, float)) or v is None:
            click.echo(f"  {k:<32} {v if not isinstance(v, float) else f'{v:.4f}'}")
    click.echo(f"wrote {report['output']}" + (f" and {len(report.get('plots', []))} plots" if report.get("plots") else ""))


def main(argv=None):
    return cli.main(args=argv, prog_name="python -m inference.evaluate", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
