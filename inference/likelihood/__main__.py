"""``python -m inference.likelihood RUN_DIR_OR_CHECKPOINT``: the importance-weighted
log-likelihood of a trained run on held-out images (its recipe's ``log_likelihood``)."""
from __future__ import annotations

import math

import click
import torch

from inference.devices import DEVICE_HELP, device_option
from inference.evaluation.data import scene_batches
from inference.runs import open_run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run", type=click.Path())
@click.option("--particles", type=click.IntRange(min=1), default=100, show_default=True, help="importance samples per image")
@click.option("--batch-particles", type=click.IntRange(min=1), default=10, show_default=True, help="particles drawn at once")
@click.option("--num-images", type=click.IntRange(min=1), default=256, show_default=True, help="held-out images to score")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="images per forward pass")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True, help="held-out split")
@click.option("--device", default="cpu", show_default=True, callback=device_option, help=DEVICE_HELP)
def main(run, particles, batch_particles, num_images, batch_size, split, device):
    """The log-likelihood of the run or checkpoint RUN on held-out images."""
    from inference.training.checkpoint import CheckpointError

    try:
        _, recipe, config, model, guide, step = open_run(run, device)
    except CheckpointError as e:
        raise click.ClickException(str(e))
    data = recipe.make_dataset(config, split)
    n = min(num_images, len(data))
    ll = torch.cat([recipe.log_likelihood(model, guide, batch["image"].to(device), config, num_particles=particles,
                                          batch_particles=batch_particles)
                    for _, batch in scene_batches(data, n, batch_size)])
    sem = float(ll.std()) / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")
    click.echo(f"{recipe.name} {config['dataset']} step {step}: log p(x) = {ll.mean():.2f} +- {sem:.2f} nats/image "
               f"({len(ll)} {split} images, K = {particles})")


if __name__ == "__main__":
    main(prog_name="python -m inference.likelihood")
