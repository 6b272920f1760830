"""Amortised guides for the models in :mod:`pyro_scenes`: ``from guides import ECONGuide, GNMGuide, SPACEGuide``."""
import importlib

_GUIDES = {"ECONGuide": "guides.econ", "GNMGuide": "guides.gnm", "SPACEGuide": "guides.space",
           "ConvDRAWGuide": "guides.convdraw", "VAEGuide": "guides.vae",
           "GENESISGuide": "guides.genesis"}

__all__ = sorted(_GUIDES)


def __getattr__(name):
    if name in _GUIDES:
        return getattr(importlib.import_module(_GUIDES[name]), name)
    raise AttributeError(f"module 'guides' has no attribute {name!r}")
