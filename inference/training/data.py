"""An endless, resumable stream of training batches.

Every epoch is a permutation of the training set drawn from a ``torch.Generator`` seeded with
``(seed, epoch)``, cut into batches of ``batch_size`` (the last incomplete batch is dropped). The
stream's position is ``(epoch, batch)``; a stream started at a saved position yields exactly the
batches that followed it, so ``--resume`` continues mid-epoch with the same data order.

The data order is exact for any number of workers. Items themselves are exact when the dataset's
``__getitem__`` is a deterministic function of the index (recommended: seed any per-item
randomness from the index); with ``workers=0`` it also holds for datasets that draw from the
global RNGs, because those states are checkpointed.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate


def _generator(*words: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1))
    return g


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> List[List[int]]:
    """The batches (index lists) of ``epoch``: a seeded permutation cut into full batches."""
    perm = torch.randperm(n, generator=_generator(seed, epoch)).tolist()
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class EndlessBatchSampler:
    """Yields index batches forever, epoch after epoch, starting at ``(epoch, batch)``.

    With ``world_size`` ranks, the batches are those of one process with batch ``world_size *
    batch_size``, and ``rank`` takes its ``batch_size`` slice of each (a distributed sampler with
    one position for all ranks, so it resumes exactly).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.global_size = batch_size * world_size
        if n < self.global_size:
            what = f"one batch of {batch_size}" + (f" per rank on {world_size} ranks" if world_size > 1 else "")
            raise ValueError(f"the training set has {n} items, fewer than {what}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.batch = epoch, batch
        self.rank = rank

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_size

    def __iter__(self) -> Iterator[List[int]]:
        epoch, start = self.epoch, self.batch
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        while True:
            for batch in epoch_batches(self.n, self.global_size, self.seed, epoch)[start:]:
                yield batch[mine]
            epoch, start = epoch + 1, 0


def collate_images(items: List[Dict]) -> torch.Tensor:
    """Training batches need only the images."""
    return torch.stack([torch.as_tensor(item["image"]) for item in items])


class Collate:
    """Stack the ``keys`` of the items: the image tensor for ``("image",)``, else a dict of tensors
    (a recipe's :meth:`~inference.recipes.base.Recipe.batch_keys`). A class, so that worker
    processes can pickle it."""

    def __init__(self, keys: Sequence[str] = ("image",)):
        self.keys = tuple(keys)

    def __call__(self, items: List[Dict]):
        if self.keys == ("image",):
            return collate_images(items)
        return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in self.keys}


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # base seed (from the stream's generator) + worker id
    np.random.seed(seed)
    import random
    random.seed(seed)


class BatchStream:
    """``next(stream)`` is the next training batch (the images, or a dict of ``keys``: :class:`Collate`);
    :meth:`state` / ``start`` resume it."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, workers: int = 0,
                 state: Dict[str, int] | None = None, rank: int = 0, world_size: int = 1,
                 keys: Sequence[str] = ("image",)):
        state = state or {"epoch": 0, "batch": 0}
        self.sampler = EndlessBatchSampler(len(dataset), batch_size, seed, state["epoch"], state["batch"],
                                           rank, world_size)
        self.epoch, self.batch = state["epoch"], state["batch"]
        # A dedicated generator: the loader draws its workers' base seed from it, never from the global RNG.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=Collate(keys),
                                 num_workers=workers, worker_init_fn=_worker_init if workers else None,
                                 generator=_generator(seed, self.epoch, self.batch, 1 + rank),
                                 persistent_workers=False)
        self._iter = None

    def state(self) -> Dict[str, int]:
        """Position of the next batch to be consumed."""
        return {"epoch": self.epoch, "batch": self.batch}

    def __next__(self):
        if self._iter is None:
            self._iter = iter(self.loader)
        batch = next(self._iter)
        self.batch += 1
        if self.batch == self.sampler.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return batch

    def __iter__(self):
        return self

    def close(self) -> None:
        """Stop worker processes."""
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def fixed_batch(dataset: Dataset, size: int) -> Dict:
    """The first ``size`` items of ``dataset`` collated with all their keys (for figures).

    Keys whose values do not collate (ragged shapes, odd types) are given as lists.
    """
    items = [dataset[i] for i in range(min(size, len(dataset)))]
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        try:
            batch[key] = default_collate(values)
        except Exception:
            batch[key] = values
    return batch


def iterate_fixed(dataset: Dataset, items: int, batch_size: int, keys: Sequence[str] = ("image",)) -> Iterator:
    """Batches (as :class:`Collate` stacks ``keys``) over the first ``items`` items, in order (for the
    validation loss)."""
    items = min(items, len(dataset))
    collate = Collate(keys)
    for start in range(0, items, batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, items))])
