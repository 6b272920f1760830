"""Counter-based, per-item random numbers.

Every scene ``i`` of a dataset with seed ``s`` draws its random numbers from a hash of
``(s, i, counter)`` (SplitMix64 finaliser, computed vectorised with numpy ``uint64``).  Each call
of :meth:`ItemRNG.uniform` consumes a fixed number of counters per item, so the numbers scene
``i`` gets do not depend on which other scenes are generated in the same batch, on the batch
size, on worker processes or on the global torch/numpy RNG state.
"""
from __future__ import annotations

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK63 = (1 << 63) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def derive_seed(*parts: int | str) -> int:
    """Deterministically combine ints/strings into one non-negative 63-bit seed."""
    h = np.array([0x1234567], dtype=np.uint64)
    for p in parts:
        if isinstance(p, str):
            for b in p.encode():
                h = _mix(h ^ np.uint64(b))
            h = _mix(h ^ np.uint64(0xFF))
        else:
            h = _mix(h ^ np.array([int(p) & ((1 << 64) - 1)], dtype=np.uint64))
    return int(h[0]) & _MASK63


class ItemRNG:
    """Uniform random numbers for a batch of items, reproducible per (seed, index)."""

    def __init__(self, seed: int, indices) -> None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        base = _mix(np.array([int(seed) & ((1 << 64) - 1)], dtype=np.uint64))
        self._keys = _mix(base ^ _mix(idx.astype(np.uint64)))  # (B,)
        self._counter = 0
        self.batch = idx.shape[0]

    def uniform_np(self, *shape: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        """float64 array of shape (B, *shape), uniform in [low, high)."""
        n = int(np.prod(shape)) if shape else 1
        ctr = np.arange(self._counter, self._counter + n, dtype=np.uint64)
        self._counter += n
        h = _mix(self._keys[:, None] ^ _mix(ctr * _M2)[None, :])
        u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        u = u.reshape((self.batch,) + tuple(shape))
        if low != 0.0 or high != 1.0:
            u = low + (high - low) * u
        return u

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(self.uniform_np(*shape, low=low, high=high)).to(dtype)

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Long tensor (B, *shape) uniform over the integers low..high-1."""
        u = self.uniform_np(*shape)
        r = np.floor(u * (high - low)).astype(np.int64) + low
        return torch.from_numpy(np.minimum(r, high - 1))

    def permutation(self, k: int, *shape: int) -> torch.Tensor:
        """Long tensor (B, *shape, k): a uniformly random permutation of 0..k-1 per row."""
        u = self.uniform_np(*shape, k)
        return torch.from_numpy(np.argsort(u, axis=-1, kind="stable").astype(np.int64))

    def bernoulli(self, p: float, *shape: int) -> torch.Tensor:
        return torch.from_numpy(self.uniform_np(*shape) < p)
