"""Pictures of each recipe's model and guide, drawn by ``pyro.render_model``: their sample sites,
plates and the dependencies between sites (docs/graphs.md).

    python -m inference.graphs --out docs/img/graphs [--model gnm] [--source-only]

Each recipe's model and guide are built from the run defaults of each of its datasets and traced
once on two held-out images. Datasets whose graphs are the same share one picture, named after
the first: ``<model>_<dataset>_{model,guide}.gv`` (the Graphviz source) and ``.png`` (drawn by
Graphviz's ``dot``). Needs the ``graphviz`` extra (``pip install -e ".[graphviz]"``); the PNGs
also need the ``dot`` program (e.g. ``apt-get install graphviz``), ``--source-only`` does not.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import click
import torch

from inference.recipes import RECIPES, get_recipe

DEFAULT_OUT = Path("docs/img/graphs")
#: images the programs are traced on (the graphs do not depend on how many)
NUM_IMAGES = 2


def trace_inputs(recipe, dataset: str) -> Tuple[Dict, torch.Tensor]:
    """The run defaults of ``recipe`` on ``dataset`` (no dataset cache) and ``NUM_IMAGES`` validation images."""
    from inference.evaluation.data import scenes
    from inference.recipes.settings import run_defaults

    config = run_defaults(recipe, dataset)
    if "cache_dir" in config:
        config["cache_dir"] = None
    config.update(model=recipe.name, dataset=dataset)
    data = recipe.make_dataset(config, "val")
    return config, scenes(data, 0, min(NUM_IMAGES, len(data)))["image"]


def graphs(name: str, dataset: str):
    """``{"model": Digraph, "guide": Digraph}`` of recipe ``name`` on ``dataset`` (sites with their
    distributions, plates, dependencies)."""
    import pyro

    recipe = get_recipe(name)
    config, images = trace_inputs(recipe, dataset)
    pyro.clear_param_store()
    torch.manual_seed(config.get("seed", 0))
    model, guide = recipe.build(config, torch.device("cpu"))
    with torch.no_grad():
        return {role: pyro.render_model(program, model_args=(images,), render_distributions=True)
                for role, program in (("model", model), ("guide", guide))}


def distinct_graphs(name: str, datasets: Optional[Sequence[str]] = None) -> List[Tuple[List[str], Dict]]:
    """``[(datasets, graphs)]`` of recipe ``name``: datasets with the same model and guide graphs together."""
    found: List[Tuple[List[str], Dict]] = []
    for dataset in datasets or get_recipe(name).datasets:
        drawn = graphs(name, dataset)
        key = tuple(g.source for g in drawn.values())
        same = next((entry for entry in found if tuple(g.source for g in entry[1].values()) == key), None)
        if same is None:
            found.append(([dataset], drawn))
        else:
            same[0].append(dataset)
    return found


def shrink(png: Path) -> None:
    """Rewrite ``png`` with 16 grey levels (the pictures are black, white and grey): a quarter of the bytes."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("L").quantize(16)
    small.save(png, optimize=True)


def write(drawn: Dict, out: Path, stem: str, render: bool) -> List[Path]:
    """``<out>/<stem>_<role>.gv`` and (``render``) ``.png`` of each graph; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for role, graph in drawn.items():
        source, picture = out / f"{stem}_{role}.gv", out / f"{stem}_{role}.png"
        if render:
            graph.render(outfile=str(picture), format="png")  # also saves the source beside it
            shrink(picture)
        source.write_text(graph.source)
        paths += [source, picture] if render else [source]
    return paths


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="folder for the .gv sources and PNGs")
@click.option("--model", "models", multiple=True, type=click.Choice(sorted(RECIPES)),
              help="a model to draw (repeatable) [default: all]")
@click.option("--source-only", is_flag=True, help="write the Graphviz sources (.gv) only, without the dot program")
def main(out: Path, models, source_only: bool):
    """Draw the model and guide of each model (pyro.render_model): sites, plates, dependencies."""
    if importlib.util.find_spec("graphviz") is None:
        raise click.ClickException('the graphviz package is not installed: pip install -e ".[graphviz]"')
    if not source_only and shutil.which("dot") is None:
        raise click.ClickException("Graphviz's dot program is not on the PATH (e.g. apt-get install graphviz); "
                                   "--source-only writes the .gv sources without it")
    for name in models or sorted(RECIPES):
        for datasets, drawn in distinct_graphs(name):
            paths = write(drawn, out, f"{name}_{datasets[0]}", render=not source_only)
            click.echo(f"{name} ({', '.join(datasets)}): {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main(prog_name="python -m inference.graphs")
