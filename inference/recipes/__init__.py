"""Model recipes for the trainer; imported lazily so one model's import error names that model."""
from __future__ import annotations

import importlib

from inference.recipes.base import Recipe

#: ``--model`` name -> "module:attribute" of its Recipe subclass
RECIPES = {
    "econ": "inference.recipes.econ:ECONRecipe",
    "gnm": "inference.recipes.gnm:GNMRecipe",
    "space": "inference.recipes.space:SPACERecipe",
    "vae": "inference.recipes.vae:VAERecipe",
    "convdraw": "inference.recipes.convdraw:ConvDRAWRecipe",
    "genesis": "inference.recipes.genesis:GENESISRecipe",
}


def get_recipe(name: str) -> Recipe:
    """Instantiate the recipe for ``--model name``; unknown names raise ``ValueError`` listing the valid ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    module, attr = RECIPES[name].split(":")
    return getattr(importlib.import_module(module), attr)()


__all__ = ["Recipe", "RECIPES", "get_recipe"]
