"""The VAE baseline on GNM's scenes (GNM supplement section 4.2; docs/baselines.md): the
negative beta-ELBO of :class:`~inference.recipes.baseline.BaselineRecipe` with beta = 1."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from inference.recipes.baseline import BaselineRecipe, BaselineSettings
from inference.recipes.settings import defaults, setting
from pyro_scenes.vae import PRESETS, preset


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

    def default_config(self, dataset: str) -> Dict:
        arrow = dict(preset="arrow-cpu") if dataset == "arrow" else {}
        return dict(defaults(VAESettings, lr=1e-4, image_size=64, num_train=60_000, **arrow), dataset=dataset)

    def model_config(self, config: Dict):
        return preset(config["preset"], z_dim=config["z_dim"])

    def build(self, config: Dict, device: torch.device):
        from guides import VAEGuide
        from pyro_scenes import VAE

        model = VAE(self.model_config(config)).to(device)
        return model, VAEGuide(model).to(device)
