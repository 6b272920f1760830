"""The VAE baseline on GNM's scenes (GNM supplement section 4.2; docs/baselines.md): the
negative beta-ELBO of :class:`~inference.recipes.baseline.BaselineRecipe` with beta = 1."""
from __future__ import annotations

from dataclasses import dataclass

from inference.recipes.baseline import BaselineRecipe, BaselineSettings
from inference.recipes.settings import setting
from pyro_scenes.vae import PRESETS


@dataclass(kw_only=True)
class VAESettings(BaselineSettings):
    """The VAE's settings (``--set`` names)."""

    #: architecture: "cpu" (64x64) by default; "paper" is the supplement's 128x128 (1.42M parameters)
    preset: str = setting("cpu", choices=tuple(PRESETS))
    z_dim: int = setting(64, ge=1)


class VAERecipe(BaselineRecipe):
    """``python -m inference.svi --model vae --dataset mnist4-10``."""

    name = "vae"
    settings = VAESettings
    model_class, config_module, preset_settings = "VAE", "pyro_scenes.vae", ("z_dim",)
