"""GENESIS (Engelcke et al., ICLR 2020) as a Pyro program: K components, each a mask latent (an
autoregressive prior, stick-breaking masks) and a component latent (spatial-broadcast decoder),
a per-pixel mixture likelihood. A generation baseline of the GNM paper (supplement section 4.2).

``from pyro_scenes import GENESIS``; the guide is :class:`guides.GENESISGuide`. See ``docs/genesis.md``.
"""
from pyro_scenes.genesis.config import PRESETS, GENESISConfig, preset
from pyro_scenes.genesis.model import GENESIS

__all__ = ["GENESIS", "GENESISConfig", "PRESETS", "preset"]
