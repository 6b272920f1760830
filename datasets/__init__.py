"""Procedural scene datasets with full ground truth for pyro-scenes.

* :class:`Sprites` -- ECON's circles / squares / triangles (appendix C.1), ``unique`` and
  ``random`` colour variants.
* :class:`MultiDigit` -- GNM's MNIST-4, MNIST-10 and MNIST-4-10 scenes, with real MNIST from
  IDX files (:class:`datasets.digits.IDXDigits`) or built-in synthetic digits
  (:class:`datasets.digits.SyntheticDigits`).
* :class:`ArrowScenes` -- a 2D procedural STAND-IN for GNM's 3D Arrow room.
* :func:`make_dataset` -- registry by name and split; :mod:`datasets.cache` -- write a split
  to one npz file and read it back; ``python -m datasets.preview`` -- PNG grids with
  ground-truth overlays.

Every dataset is a :class:`torch.utils.data.Dataset` of dicts of fixed-shape tensors (see
docs/datasets.md); item ``i`` is a pure function of ``(seed, i)``; ``generate(indices)``
renders many scenes at once.  This package imports nothing from ``pyro_scenes``, ``guides``
or ``inference``.
"""
from . import cache, digits
from .arrow import ArrowScenes
from .base import SceneDataset
from .errors import DatasetError
from .multidigit import MultiDigit
from .registry import DATASET_NAMES, SPLITS, make_dataset
from .sprites import Sprites

__all__ = ["ArrowScenes", "DATASET_NAMES", "DatasetError", "MultiDigit", "SPLITS",
           "SceneDataset", "Sprites", "cache", "digits", "make_dataset"]
