"""Seeding, and capturing / restoring every random number generator a training step may use."""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA


def get_rng_state() -> Dict[str, Any]:
    """The state of torch (CPU, CUDA), numpy and python RNGs in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`; CUDA states are restored when CUDA is available."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@contextlib.contextmanager
def preserved_rng(seed: int | None = None):
    """Run a block (validation, figures) without disturbing the training RNG streams.

    With ``seed`` the block itself is seeded, so it draws the same noise every time it runs.
    """
    state = get_rng_state()
    try:
        if seed is not None:
            seed_all(seed)
        yield
    finally:
        set_rng_state(state)
