"""SPACE (Lin et al., ICLR 2020) as a Pyro program: GNM's object grid with fixed priors over a
GENESIS-style background of K components.

``from pyro_scenes import SPACE``; the guide is :class:`guides.SPACEGuide`. See ``docs/space.md``.
"""
from pyro_scenes.space.config import PRESETS, SPACEConfig, preset
from pyro_scenes.space.distributions import PixelMixture
from pyro_scenes.space.model import SPACE

__all__ = ["PRESETS", "PixelMixture", "SPACE", "SPACEConfig", "preset"]
