"""GNM: Generative Neurosymbolic Machines (Jiang & Ahn, NeurIPS 2020) as a Pyro program.

``from pyro_scenes import GNM``; the guide is :class:`guides.GNMGuide`. See ``docs/gnm.md``.
"""
from pyro_scenes.gnm.config import PRESETS, GNMConfig, preset
from pyro_scenes.gnm.distributions import ConcreteBernoulli, bernoulli_kl_logits
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.gnm.model import GNM, STRUCTURE_SITES
from pyro_scenes.gnm.render import RENDER_EFFECT, RenderOptions, render_options, where_from_raw

__all__ = [
    "GNM",
    "GNMConfig",
    "PRESETS",
    "preset",
    "ConcreteBernoulli",
    "bernoulli_kl_logits",
    "ModeSites",
    "STRUCTURE_SITES",
    "RENDER_EFFECT",
    "RenderOptions",
    "render_options",
    "where_from_raw",
]
