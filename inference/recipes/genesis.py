"""GENESIS as GNM's baseline (GNM supplement section 4.2; docs/genesis.md): config, optimiser, LR schedule.

The training loss is :class:`~inference.recipes.baseline.BaselineRecipe`'s negative beta-ELBO, per
image and averaged over the batch::

    loss = -E_q[log PixelMixture(x; m_k, mu_k, sigma)]
           + beta * sum_k [ KL(q(z^m_k | x, z^m_<k) || p(z^m_k | z^m_<k)) + KL(q(z^c_k | x, m_k) || p(z^c_k | z^m_k)) ]

with the supplement's three changes to the official GENESIS:

(a) the learning rate starts high and is reset to a lower one after a few thousand steps:
    ``lr`` (1e-3) for the first ``lr_drop_step`` (3,000) steps, then ``lr_low`` (1e-4, the official
    GENESIS rate) -- a ``LambdaLR`` the trainer steps after every update and checkpoints;
(b) the beta-ELBO instead of GECO: ``beta`` 10 on the digit datasets, 15 on Arrow;
(c) a spatial-broadcast component decoder of 3 layers instead of 4 (the presets' ``comp_dec_layers``).

The optimiser is Adam, as the official GENESIS (not the RMSprop of GNM and the other baselines).
Datasets, splits and the generation metrics (S-Acc and D-Steps of ``model.sample(n)``, the
importance-weighted ``log p(x)``) are the baselines' shared ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from inference.recipes.baseline import BaselineRecipe, BaselineSettings
from inference.recipes.settings import setting
from pyro_scenes.genesis.config import PRESETS


@dataclass(kw_only=True)
class GENESISSettings(BaselineSettings):
    """GENESIS's settings (``--set`` names)."""

    #: the supplement's beta-ELBO: 10 on the digits, 15 on Arrow
    beta: float = setting(10.0, gt=0)
    preset: str = setting("cpu", choices=tuple(PRESETS))
    #: K components; 5 = MNIST-4's four digits and the background (GENESIS's multi-dSprites K); one
    #: component per MNIST-10 digit would need 11 (``--set num_components=11``), at twice the cost
    num_components: int = setting(5, ge=1)
    #: the LR schedule (a): ``lr`` for steps 0 .. lr_drop_step - 1, then ``lr_low``
    lr_low: float = setting(1e-4, gt=0)
    lr_drop_step: int = setting(3_000, ge=0)
    #: pixel std of every component of p(x | z) (GENESIS's 0.7 goes with GECO; with a fixed beta a
    #: smaller std keeps the reconstruction term from being swamped by beta * KL)
    sigma: float = setting(0.1, gt=0)


#: how the Arrow scenes' defaults differ
ARROW = dict(preset="arrow-cpu", beta=15.0)


class GENESISRecipe(BaselineRecipe):
    """``python -m inference.svi --model genesis --dataset mnist4`` (see docs/genesis.md)."""

    name = "genesis"
    settings = GENESISSettings
    model_class, config_module, preset_settings = "GENESIS", "pyro_scenes.genesis.config", ("num_components", "sigma")
    default_lr, arrow_defaults = 1e-3, ARROW

    def make_optimizer(self, params, config: Dict) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=config["lr"])  # the official GENESIS's optimiser

    def make_scheduler(self, optimizer: torch.optim.Optimizer, config: Dict):
        """The supplement's schedule (a): ``lr`` until step ``lr_drop_step``, ``lr_low`` from it on."""
        drop, factor = int(config["lr_drop_step"]), float(config["lr_low"]) / float(config["lr"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < drop else factor)
