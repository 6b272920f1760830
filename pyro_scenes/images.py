"""The checks every model and guide runs on its input: images to score, or a number of scenes."""
from __future__ import annotations

import operator
from typing import Tuple

import torch


def check_image_batch(x, shape: Tuple[int, int, int], who: str) -> int:
    """Raise ``ValueError`` naming ``who`` unless ``x`` is a float tensor of B >= 1 images of
    ``shape`` (C, H, W) with finite values in [0, 1]; return B."""
    want = "B x {} x {} x {}".format(*shape)
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{who} expects float images ({want}, values in [0, 1]), got {got}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{who} expects images of shape {want}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{who} expects at least one image, got an empty batch {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{who} expects finite pixel values, got NaN or infinite ones")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{who} expects pixel values in [0, 1], got values in [{float(x.min()):.3g}, "
                         f"{float(x.max()):.3g}]")
    return x.shape[0]


def check_batch_size(batch_size, who: str) -> int:
    """``batch_size`` as an int; ``ValueError`` naming ``who`` unless it is an integer >= 1."""
    try:
        n = operator.index(batch_size)
    except TypeError:
        n = None
    if n is None or isinstance(batch_size, bool) or n < 1:
        raise ValueError(f"{who}: batch_size must be an integer >= 1, got {batch_size!r}")
    return n


def check_call(x, batch_size, shape: Tuple[int, int, int], who: str) -> int:
    """The batch size of a model or guide call: B of images ``x`` (:func:`check_image_batch`) or,
    when sampling (``x`` None), ``batch_size`` (:func:`check_batch_size`); ``ValueError`` naming
    ``who`` otherwise, or when both are given and disagree."""
    if x is None:
        if batch_size is None:
            raise ValueError(f"{who}: give images x (B, C, H, W) to score or batch_size=n to sample")
        return check_batch_size(batch_size, who)
    n = check_image_batch(x, shape, who)
    if batch_size is not None and check_batch_size(batch_size, who) != n:
        raise ValueError(f"{who}: batch_size={batch_size} but x holds {n} images")
    return n
