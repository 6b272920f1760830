"""pyro-scenes: structured generative scene models as Pyro programs.

``from pyro_scenes import ECON, GNM, SPACE`` and GNM's baselines ``VAE``, ``ConvDRAW``, ``GENESIS``. Models are imported lazily so that importing one never
pays for (or fails on) the other.
"""
import importlib

_MODELS = {"ECON": "pyro_scenes.econ", "GNM": "pyro_scenes.gnm", "SPACE": "pyro_scenes.space",
           "ConvDRAW": "pyro_scenes.convdraw", "VAE": "pyro_scenes.vae",
           "GENESIS": "pyro_scenes.genesis"}

__all__ = sorted(_MODELS)


def __getattr__(name):
    if name in _MODELS:
        return getattr(importlib.import_module(_MODELS[name]), name)
    raise AttributeError(f"module 'pyro_scenes' has no attribute {name!r}")
