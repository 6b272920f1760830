"""Shared machinery: the :class:`SceneDataset` base class and ground-truth helpers."""
from __future__ import annotations

import numbers
from typing import Dict, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError

Batch = Dict[str, torch.Tensor]


def check_num_scenes(num_scenes) -> int:
    if isinstance(num_scenes, bool) or not isinstance(num_scenes, numbers.Integral):
        raise DatasetError(f"num_scenes must be an integer, got {num_scenes!r}")
    if num_scenes < 0:
        raise DatasetError(f"num_scenes must be >= 0, got {num_scenes}")
    return int(num_scenes)


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DatasetError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DatasetError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class SceneDataset(Dataset):
    """Base class of the procedural scene datasets.

    Subclasses implement :meth:`_generate` (a batch of scene indices -> dict of batched tensors).
    Scene ``i`` is a pure function of ``(seed, i)`` and the constructor settings: it is the same
    whether generated alone (``dataset[i]``) or inside any batch (``dataset.generate(...)``).
    Generation is lazy: nothing is rendered until an item or batch is requested.
    """

    #: registry-style name, set by subclasses / instances
    name: str = "scenes"
    #: rendering chunk size used by :meth:`generate` (bounds peak memory)
    chunk_size: int = 256

    def __init__(self, num_scenes: int, seed: int) -> None:
        self.num_scenes = check_num_scenes(num_scenes)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise DatasetError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)

    # -- to be provided by subclasses -------------------------------------------------------
    max_objects: int
    num_channels: int
    image_size: int

    def _generate(self, indices: np.ndarray) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable settings that, with the class name, determine every item."""
        raise NotImplementedError

    # -- public API -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_scenes

    def _check_indices(self, indices) -> np.ndarray:
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.ndim == 0:
            idx = idx.reshape(1)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise DatasetError(f"indices must be a 1-D sequence of integers, got {indices!r}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_scenes):
            raise IndexError(
                f"scene index out of range for {self.name} with {self.num_scenes} scenes: "
                f"{idx[(idx < 0) | (idx >= self.num_scenes)][:5].tolist()}")
        return idx

    def generate(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> Batch:
        """Render many scenes at once; returns the item dict with a leading batch dimension."""
        idx = self._check_indices(indices)
        if idx.size == 0:
            # render one scene to learn the shapes, then take an empty slice
            probe = self._generate(np.zeros(1, dtype=np.int64))
            return {k: v[:0] for k, v in probe.items()}
        parts = [self._generate(idx[s:s + self.chunk_size])
                 for s in range(0, idx.size, self.chunk_size)]
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def __getitem__(self, index) -> Batch:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"dataset index must be an integer, got {index!r}")
        index = int(index)
        if index < 0:
            index += self.num_scenes
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"index {index} out of range for {self.num_scenes} scenes")
        return {k: v[0] for k, v in self._generate(np.array([index], dtype=np.int64)).items()}

    def __getitems__(self, indices) -> list:
        """Batched fetch used by :class:`torch.utils.data.DataLoader` (torch >= 2.0): renders
        the whole batch with :meth:`generate`; ``default_collate`` then stacks the items."""
        batch = self.generate(list(indices))
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]

    def iter_batches(self, batch_size: int, shuffle: bool = False,
                     generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yield batched dicts (the fast path for training loops without a DataLoader)."""
        batch_size = check_int("batch_size", batch_size, 1)
        order = (torch.randperm(self.num_scenes, generator=generator) if shuffle
                 else torch.arange(self.num_scenes))
        for s in range(0, self.num_scenes, batch_size):
            yield self.generate(order[s:s + batch_size])

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}(num_scenes={self.num_scenes}, {cfg})"


# --------------------------------------------------------------------------------------------
# ground-truth helpers (all exact elementwise ops, so batch and single renders agree bitwise)

def layer(masks: torch.Tensor, valid: torch.Tensor | None = None):
    """Visible masks and segmentation from full masks listed back to front.

    ``masks``: bool (B, N, H, W), object 0 deepest.  Returns ``visible`` (bool, same shape):
    each object's mask minus the masks of all objects listed after it, and ``segmentation``
    (long (B, H, W)): 0 for background, ``i + 1`` where object ``i`` is visible.
    """
    if valid is not None:
        masks = masks & valid[:, :, None, None]
    n = masks.shape[1]
    visible = torch.empty_like(masks)
    above = torch.zeros_like(masks[:, 0])
    seg = torch.zeros(masks.shape[0], *masks.shape[2:], dtype=torch.long)
    for i in range(n - 1, -1, -1):
        vis = masks[:, i] & ~above
        visible[:, i] = vis
        seg.masked_fill_(vis, i + 1)
        above |= masks[:, i]
    return visible, seg


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (x0, y0, x1, y1), x1/y1 exclusive, of bool masks (..., H, W); 0s if empty."""
    h, w = masks.shape[-2:]
    rows = masks.any(-1)  # (..., H)
    cols = masks.any(-2)  # (..., W)
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    big = max(h, w) + 1
    y0 = torch.where(rows, ar_h, big).amin(-1)
    y1 = torch.where(rows, ar_h + 1, 0).amax(-1)
    x0 = torch.where(cols, ar_w, big).amin(-1)
    x1 = torch.where(cols, ar_w + 1, 0).amax(-1)
    empty = ~rows.any(-1)
    box = torch.stack([x0, y0, x1, y1], -1).float()
    return box.masked_fill(empty[..., None], 0.0)


def pixel_grid(size: int, dtype=torch.float32):
    """Pixel-centre coordinates: xs (1, 1, 1, W) and ys (1, 1, H, 1), centres at i + 0.5."""
    c = torch.arange(size, dtype=dtype) + 0.5
    return c.view(1, 1, 1, size), c.view(1, 1, size, 1)


def upsample_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) bilinear interpolation weights with corners aligned.

    ``W @ x @ W.T`` upsamples a (n_in, n_in) field smoothly; used instead of ``F.interpolate``
    for random noise fields because a matmul with a fixed matrix is fast on CPU.
    """
    pos = torch.linspace(0, n_in - 1, n_out, dtype=torch.float64)
    lo = pos.floor().clamp(max=n_in - 2).long()
    frac = pos - lo
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    w[torch.arange(n_out), lo] = 1 - frac
    w[torch.arange(n_out), lo + 1] = frac
    return w.float()


def upsample_bilinear(field: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling (corners aligned) of fields (..., n, n) to (..., size, size).

    Written with gathers and elementwise ops only (no BLAS), so each item's result is bitwise
    the same whatever the batch it is computed in.
    """
    n = field.shape[-1]
    pos = torch.linspace(0, n - 1, size, dtype=torch.float64)
    lo = pos.floor().clamp(max=n - 2).long()
    frac = (pos - lo).float()
    f_col = frac[:, None]
    rows = field.index_select(-2, lo) * (1 - f_col) + field.index_select(-2, lo + 1) * f_col
    return rows.index_select(-1, lo) * (1 - frac) + rows.index_select(-1, lo + 1) * frac
