"""``python -m inference.pretrained list``, ``... export RUN NAME --command CMD`` and ``... unpack NAME OUT``."""
from __future__ import annotations

import json
import sys

import click

from inference import pretrained


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """The library's pretrained models."""


@cli.command("list")
def list_models():
    """Each shipped model with its step, held-out metrics and the command that trained it."""
    for name in pretrained.names():
        record = pretrained.info(name)
        click.echo(f"{name}: {record['model']} on {record['config'].get('dataset')}, step {record['step']}")
        click.echo(f"  trained with: {record['command']}")
        if record.get("metrics"):
            click.echo(f"  metrics: {json.dumps(record['metrics'])}")


@cli.command()
@click.argument("run", type=click.Path(exists=True))
@click.argument("name")
@click.option("--command", required=True, help="the command that trained the run (stored with the weights)")
@click.option("--metrics", "metrics_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON of held-out results (e.g. from python -m inference.evaluate) to store with it")
def export(run, name, command, metrics_file):
    """Write RUN's latest checkpoint (weights and config only) as pretrained model NAME."""
    from inference.training.checkpoint import CheckpointError

    metrics = None
    if metrics_file:
        report = json.loads(open(metrics_file).read())
        scalar = lambda v: isinstance(v, (int, float, bool))  # noqa: E731
        metrics = {k: v for k, v in report.get("results", report).items()
                   if scalar(v) or (isinstance(v, dict) and all(map(scalar, v.values())))}
    try:
        out = pretrained.export(run, name, command, metrics)
    except (CheckpointError, pretrained.PretrainedError) as e:
        raise click.ClickException(str(e))
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


@cli.command()
@click.argument("name")
@click.argument("out", type=click.Path(file_okay=False))
def unpack(name, out):
    """Make a training run in OUT from pretrained model NAME (config and weights, fresh optimiser),
    to fine-tune it: python -m inference.svi --resume --amend --out OUT --set KEY=VALUE --steps N."""
    try:
        path = pretrained.unpack(name, out)
    except pretrained.PretrainedError as e:
        raise click.ClickException(str(e))
    click.echo(f"wrote {path}; continue with: python -m inference.svi --resume --amend --out {out} --steps N")


if __name__ == "__main__":
    cli.main(args=sys.argv[1:], prog_name="python -m inference.pretrained")
