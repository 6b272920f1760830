"""Draw a run's figures from a checkpoint: ``python -m inference.figures RUN_DIR_OR_CHECKPOINT``.

Uses the model's recipe (the same figures a training run writes) on held-out images.
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from inference.devices import DEVICE_HELP, device_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="folder for the PNGs [default: <run>/figures]")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True, help="held-out split")
@click.option("--num-images", type=click.IntRange(min=1), default=8, show_default=True, help="held-out images to draw")
@click.option("--device", default="cpu", show_default=True, callback=device_option, help=DEVICE_HELP)
def main(path: Path, out_dir, split: str, num_images: int, device: str):
    """Write the figures of the run or checkpoint PATH."""
    from inference.evaluation.data import scenes
    from inference.runs import open_run
    from inference.training.checkpoint import CheckpointError, run_dir

    try:
        ckpt, recipe, config, model, guide, step = open_run(path, device)
    except CheckpointError as err:
        raise click.ClickException(str(err))
    dataset = recipe.make_dataset(config, split)
    batch = scenes(dataset, 0, min(num_images, len(dataset)))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        paths = recipe.figures(model, guide, batch, Path(out_dir or run_dir(ckpt) / "figures"), step)
    for p in paths:
        click.echo(str(p))


if __name__ == "__main__":
    main(prog_name="python -m inference.figures")
