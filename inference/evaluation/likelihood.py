"""The ``ll`` metric: mean importance-weighted ``log p(x)`` over held-out images (docs/metrics.md)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch

from inference.evaluation.data import scene_batches

#: at most this many held-out images enter the LL estimate (it costs K model runs per image)
LL_IMAGES = 200


def evaluate_log_likelihood(log_likelihood: Callable[[torch.Tensor], torch.Tensor], dataset, num_images: int,
                            batch_size: int = 32, device="cpu", progress: bool = False) -> Tuple[Dict, torch.Tensor]:
    """``log_likelihood(images)`` (one value per image) on the first ``min(num_images, LL_IMAGES)``
    images: ``({"ll": mean, "ll_sem": its standard error, "ll_images": count}, per-image values)``."""
    m = min(num_images, LL_IMAGES)
    values = [log_likelihood(batch["image"].to(device)).float().cpu()
              for _, batch in scene_batches(dataset, m, batch_size, "log-likelihood", progress)]
    ll = torch.cat(values)
    sem = float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else float("nan")
    return {"ll": float(ll.mean()), "ll_sem": sem, "ll_images": m}, ll
