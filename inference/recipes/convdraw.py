"""The ConvDRAW baseline on GNM's scenes (GNM supplement section 4.2; docs/baselines.md): the
negative beta-ELBO of :class:`~inference.recipes.baseline.BaselineRecipe` over z_1..L.
``--set draw_steps=8`` is ConvDRAW-8, ``--set beta=10`` ConvDRAW-beta-10 (supplement Table 1)."""
from __future__ import annotations

from dataclasses import dataclass

from inference.recipes.baseline import BaselineRecipe, BaselineSettings
from inference.recipes.settings import setting
from pyro_scenes.convdraw import PRESETS


@dataclass(kw_only=True)
class ConvDRAWSettings(BaselineSettings):
    """ConvDRAW's settings (``--set`` names)."""

    #: architecture: "cpu" (64x64) by default; "paper"/"paper-arrow" are the supplement's 128x128
    preset: str = setting("cpu", choices=tuple(PRESETS))
    draw_steps: int = setting(4, ge=1)


class ConvDRAWRecipe(BaselineRecipe):
    """``python -m inference.svi --model convdraw --dataset mnist4-10 [--set draw_steps=8] [--set beta=10]``."""

    name = "convdraw"
    settings = ConvDRAWSettings
    model_class, config_module, preset_settings = "ConvDRAW", "pyro_scenes.convdraw", ("draw_steps",)
