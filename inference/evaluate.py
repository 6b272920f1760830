"""Evaluate a trained run with the metrics of its model's recipe (protocols: docs/metrics.md).

    python -m inference.evaluate RUN_DIR_OR_CHECKPOINT [--metrics ari,fg-ari] [--num-samples N]
        [--split test] [--out FILE.json] [--device cpu]

Default: all metrics of the checkpoint's model. Writes a JSON of results (default
``<run>/eval/metrics_<split>.json``) and plots beside it. Exits with status 1 on a missing,
unreadable or incompatible checkpoint and 2 on bad options (e.g. an unknown metric).
"""
from __future__ import annotations

import sys

import click

from inference.evaluation import EvaluationError, evaluate, model_metrics, parse_metrics

METRICS_HELP = "; ".join(f"{model}: {', '.join(metrics)}" for model, metrics in model_metrics().items())


@click.command(help=__doc__.split("\n\n")[0] + f" Metrics per model: {METRICS_HELP}.")
@click.argument("path", type=click.Path())
@click.option("--metrics", "-m", multiple=True, help="comma-separated metric names (default: all for the model)")
@click.option("--num-samples", "-n", type=click.IntRange(min=1), default=None,
              help="held-out scenes (and generations) to evaluate [default: the whole split]")
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]))
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="JSON file to write [default: <run>/eval/metrics_<split>.json]")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--particles", default=None, type=click.IntRange(min=1), help="importance samples for LL [default: config, 100]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a setting of the checkpoint's config (repeatable), e.g. ECON on 4-object scenes: "
                   "--set num_objects=4 --set num_layers=5")
@click.option("--no-plots", is_flag=True, help="write only the JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
def cli(path, metrics, num_samples, split, out, device, batch_size, particles, sets, no_plots, quiet):
    from inference.training.checkpoint import CheckpointError
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
