"""Held-out scenes for the evaluations, as whole batches with every key of the items."""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch
from torch.utils.data import default_collate


def scenes(dataset, start: int, stop: int) -> Dict[str, torch.Tensor]:
    """Items ``start .. stop - 1`` of ``dataset`` as one batch (``dataset.generate`` when it has one)."""
    index = list(range(start, stop))
    if hasattr(dataset, "generate"):
        return dataset.generate(index)
    return default_collate([dataset[i] for i in index])


def scene_batches(dataset, n: int, batch_size: int, desc: str = "", progress: bool = False) -> Iterator[Tuple[int, Dict]]:
    """``(start, batch)`` over the first ``n`` items, ``batch_size`` at a time, with a progress bar if asked."""
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        yield start, scenes(dataset, start, min(start + batch_size, n))
