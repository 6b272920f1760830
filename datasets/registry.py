"""Dataset registry: :func:`make_dataset` by name and split."""
from __future__ import annotations

import inspect

from ._rng import derive_seed
from .arrow import ArrowScenes
from .base import SceneDataset, check_num_scenes
from .errors import DatasetError
from .multidigit import MultiDigit
from .sprites import Sprites

DATASET_NAMES = ("sprites-unique", "sprites-random", "mnist4", "mnist10", "mnist4-10", "arrow")
SPLITS = ("train", "val", "test")

#: default number of scenes per split: ECON appendix C.1 (50,000 train / 100 validation; 1,000
#: test is our choice) and GNM (60k / 6k / 6k, the authors' splits)
DEFAULT_SIZES = {
    "sprites": {"train": 50_000, "val": 100, "test": 1_000},
    "gnm": {"train": 60_000, "val": 6_000, "test": 6_000},
}


def _family(name: str) -> str:
    return "sprites" if name.startswith("sprites") else "gnm"


def split_seed(name: str, split: str, seed: int) -> int:
    """Seed of a split: distinct and deterministic for every (name, split, seed)."""
    return derive_seed("pyro-scenes", name, split, int(seed))


def make_dataset(name: str, split: str = "train", num_scenes: int | None = None,
                 image_size: int | None = None, seed: int | None = None,
                 **options) -> SceneDataset:
    """Build a dataset by registry name.

    Args:
        name: one of :data:`DATASET_NAMES`.
        split: ``"train"``, ``"val"`` or ``"test"``; each split gets its own seed, derived from
            ``(name, split, seed)``, so splits never share scenes.
        num_scenes: default per split (sprites 50,000 / 100 / 1,000, GNM 60,000 / 6,000 /
            6,000).  Generation is lazy, so the defaults cost nothing until items are read.
        image_size: default 64 for sprites, 128 otherwise.
        seed: base seed (default 0).
        options: passed to the class (``Sprites``: num_objects, allow_repeats, antialias,
            size_range; ``MultiDigit``: digit_source, digit_scale, and ``mnist_path`` as a
            shortcut for an IDX digit source).
    """
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if num_scenes is None:
        num_scenes = DEFAULT_SIZES[_family(name)][split]
    num_scenes = check_num_scenes(num_scenes)
    seed = split_seed(name, split, 0 if seed is None else seed)
    kwargs = dict(num_scenes=num_scenes, seed=seed)
    if image_size is not None:
        kwargs["image_size"] = image_size
    if name.startswith("sprites"):
        cls, kwargs["variant"] = Sprites, name.split("-", 1)[1]
    elif name == "arrow":
        cls = ArrowScenes
    else:
        cls, kwargs["variant"] = MultiDigit, name
        mnist_path = options.pop("mnist_path", None)
        if mnist_path is not None:
            if options.get("digit_source") is not None:
                raise DatasetError("give either mnist_path or digit_source, not both")
            options["digit_source"] = str(mnist_path)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"} - set(kwargs)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                           f"valid options: {', '.join(sorted(allowed)) or 'none'}")
    ds = cls(**kwargs, **options)
    ds.split = split
    ds.registry_name = name
    return ds
