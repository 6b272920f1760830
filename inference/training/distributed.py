"""Data-parallel training on ``torch.distributed`` (``torchrun``), for the model-agnostic trainer.

``torchrun --nproc_per_node N -m inference.svi ...`` starts N copies of the trainer. Each copy
(a *rank*) builds the recipe's model and guide, then:

* wraps them in :class:`LossModule`, an ``nn.Module`` whose ``forward`` is the recipe's loss, inside
  ``DistributedDataParallel``: DDP broadcasts rank 0's parameters at construction and averages
  the gradients in ``backward``. The model and guide are the same objects the recipe built, so
  their ``pyro.module`` calls register the same parameter tensors in Pyro's param store, on every
  rank, and checkpoints hold the unwrapped modules (the single-process format);
* takes its slice of every global batch (:class:`~inference.training.data.BatchStream` with
  ``rank`` / ``world_size``): global batch ``world_size x batch_size`` from the same seeded
  permutation as a one-process run with that batch, so N ranks with batch B see exactly the data of
  one process with batch N*B, and the stream position is shared (exact resume);
* draws its own noise: rank r > 0 reseeds its RNGs with :func:`rank_seed` after building, rank 0
  keeps the run's seed (a one-process run is unchanged);
* leaves the files to rank 0: logs, validation, figures and checkpoints. Checkpoints add every
  rank's RNG state (``rank_rng``) and ``world_size``, so ``--resume`` under torchrun is exact.

Gloo on CPU, NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, List

import torch

#: offset of rank r's seed from the run's seed (rank 0 uses the run's seed itself)
RANK_SEED_STRIDE = 7_919


def rank_seed(seed: int, rank: int) -> int:
    """The RNG seed of ``rank``'s training noise (rank 0: the run's own seed)."""
    return int(seed) + RANK_SEED_STRIDE * int(rank)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Ranks":
        """The ranks torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process without them."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, kind: str) -> torch.device:
        """``cpu``, or this rank's GPU ``cuda:LOCAL_RANK`` for ``cuda``."""
        if kind == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return torch.device(kind)

    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, NCCL on CUDA); nothing for one process."""
        if not self.distributed or torch.distributed.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size)

    def stop(self) -> None:
        """Leave the process group once every rank is here: a rank that tears down its gloo
        connections while a peer still uses them can abort at exit ("terminate called without an
        active exception"). A peer that never arrives (it failed) is waited for 60 s at most."""
        if not (self.distributed and torch.distributed.is_initialized()):
            return
        try:
            if torch.distributed.get_backend() == "gloo":
                torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                torch.distributed.barrier()
        except RuntimeError:
            pass  # a failed peer: leave anyway
        finally:
            torch.distributed.destroy_process_group()

    # ------------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a Ctrl-C seen by one)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def _collective_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


class LossModule(torch.nn.Module):
    """The recipe's loss as a module over the model and guide, for ``DistributedDataParallel``.

    ``forward(images, step)`` returns ``recipe.loss(model, guide, images, step, config)``. The
    model and guide are registered as children (their parameters counted once), so DDP sees
    every trained parameter; the recipe, config and step are plain attributes.
    """

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, loss: Callable, config: dict):
        super().__init__()
        self.model, self.guide = model, guide
        self._loss, self._config = loss, config

    def forward(self, images: torch.Tensor, step: int):
        return self._loss(self.model, self.guide, images, step, self._config)


def data_parallel(model: torch.nn.Module, guide: torch.nn.Module, loss: Callable, config: dict,
                  device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(LossModule(...))``. ``find_unused_parameters``: a step need not use
    every parameter (ECON trains only the winning experts), and the unused ones differ by rank."""
    from torch.nn.parallel import DistributedDataParallel

    module = LossModule(model, guide, loss, config)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)
