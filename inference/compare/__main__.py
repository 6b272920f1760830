"""``python -m inference.compare``: train, evaluate and tabulate generative scene models on one
dataset, the GNM paper's Table 1 and Figure 7 (logic in :mod:`inference.compare`; docs/compare.md).

    python -m inference.compare --dataset mnist4-10 --budget-minutes 60
    python -m inference.compare --models gnm,gnm-8,convdraw-beta10 --steps 20000 --set gnm:schedule=budget
"""
from __future__ import annotations

import sys

import click

from inference.compare import (
    DEFAULT_DATASET, DEFAULT_METRICS, DEFAULT_MODELS, REGISTRY, ComparisonInterrupted, parse_metric_options,
    run_comparison,
)
from inference.devices import DEVICE_HELP, device_option
from inference.recipes.settings import FLAGS, flag_name

EPILOG = f"""
Models: {', '.join(f'{n} ({r}' + (''.join(f' {k}={v}' for k, v in o.items())) + ')' for n, (r, o) in REGISTRY.items())}.
Each model's settings: its recipe's defaults for --dataset < the flags < --set KEY=VALUE (every model that
has the setting) < the model's own settings above < --set NAME:KEY=VALUE. Files: OUT/NAME (each model's run,
train.log, eval.json), OUT/plan.json (steps and calibrations), OUT/table1.md, OUT/table1.json,
OUT/generations.png. Run the same command again to continue: finished runs and evaluations are reused,
interrupted runs resumed. Exit status: 0 done, 1 a model failed (the others are in the table) or an error,
2 bad input, 130 interrupted.
"""


def setting_flags(command):
    """The trainer's flags (``--batch-size``, ``--image-size``, ...) for every model; ``--steps`` is the
    comparison's own."""
    for key, (kind, text) in reversed(FLAGS.items()):
        if key == "steps":
            continue
        name = flag_name(key)
        decls = [f"{name}/--no-{name[2:]}"] if kind is bool else [name]
        command = click.option(*decls, key, type=None if kind is bool else kind, default=None,
                               help=f"{text} For every model. Default: each model's config.")(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, metavar="NAME",
              help="Dataset every model is trained and evaluated on.")
@click.option("--models", "models", multiple=True, metavar="NAME,NAME",
              help=f"Comma-separated models, in table order [default: {','.join(DEFAULT_MODELS)}].")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training steps of every model.")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Training minutes of every model, turned into steps per model by a short calibration run "
                   "(recorded in OUT/plan.json). Without --steps and --budget-minutes: the steps of OUT/plan.json.")
@click.option("--out", metavar="DIR", default=None, help="Output folder [default: runs/compare-<dataset>].")
@click.option("--set", "sets", multiple=True, metavar="[NAME:]KEY=VALUE",
              help="Override a setting (repeatable; VALUE read as JSON, else as a string): of every model whose "
                   "recipe has KEY, or with NAME: of that model only.")
@click.option("--num-samples", "-n", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out (test) scenes, and generations, each model is evaluated on.")
@click.option("--particles", type=click.IntRange(min=1), default=None,
              help="Importance samples per image for LL [default: each model's ll_particles].")
@click.option("--metrics", "-m", multiple=True, metavar="NAME,NAME",
              help=f"Comma-separated metrics [default: {','.join(DEFAULT_METRICS)}].")
@click.option("--metric-option", "metric_options", multiple=True, metavar="METRIC:KEY=VALUE",
              help="A setting of one metric (repeatable), e.g. d-steps:max_steps=400 or s-acc:cache=DIR.")
@click.option("--device", default="cpu", show_default=True, callback=device_option, help=DEVICE_HELP)
@click.option("--eval-batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Scenes per forward pass in the evaluation.")
@click.option("--generations", type=click.IntRange(min=0), default=8, show_default=True,
              help="Generations per model in OUT/generations.png (0: no figure).")
@setting_flags
def main(dataset, models, steps, budget_minutes, out, sets, num_samples, particles, metrics, metric_options, device,
         eval_batch_size, generations, **given):
    """Train (or reuse), evaluate and tabulate generative scene models: GNM's Table 1 and Figure 7."""
    from inference.evaluate import EvaluationError, parse_metrics

    flags = {k: v for k, v in given.items() if v is not None}
    try:
        chosen = parse_metrics(metrics)
    except EvaluationError as e:
        raise click.BadParameter(str(e), param_hint="'--metrics'") from None
    options = parse_metric_options(metric_options)
    try:
        summary = run_comparison(dataset=dataset, models=models, out=out, steps=steps, budget_minutes=budget_minutes,
                                 flags=flags, sets=sets, num_samples=num_samples, particles=particles, metrics=chosen,
                                 metric_options=options, device=device, eval_batch_size=eval_batch_size,
                                 generations=generations)
    except ComparisonInterrupted as e:
        click.echo(f"\n{e}. Run the same command again to continue (finished runs and evaluations are reused, "
                   f"this one is resumed from its checkpoint).", err=True)
        sys.exit(130)
    failed = [r["name"] for r in summary["models"] if r["status"] != "done"]
    if failed:
        raise click.ClickException(f"{', '.join(failed)} failed (see the table and OUT/NAME/train.log); "
                                   f"the other models are in the table")


if __name__ == "__main__":
    main(prog_name="python -m inference.compare")
