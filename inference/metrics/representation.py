"""Representation quality: classify inferred z_what into digit classes (GNM supplement Table 2).

Protocol (also in ``docs/metrics.md``):

* Objects: every inferred object with z_pres = 1 on the evaluation images; its label is the
  class of the ground-truth object whose box centre is nearest to the inferred box centre
  (:func:`nearest_object_labels`). Images without ground-truth objects contribute nothing.
* Split: by image. The first ``train_fraction`` (0.8) of the images (in dataset order) give the
  training objects, the rest the test objects.
* Classifier: a two-layer MLP ``Linear(D, 256) - ReLU - Linear(256, 10)`` on z_what
  standardised with the training mean and std; Adam lr 1e-3, batch 256, 50 epochs, seed 0.
* Result: accuracy on the test objects.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["nearest_object_labels", "zwhat_classification_accuracy", "REPRESENTATION_PROTOCOL"]

REPRESENTATION_PROTOCOL = dict(train_fraction=0.8, hidden=256, lr=1e-3, batch_size=256, epochs=50, seed=0,
                               classifier="Linear(D,256)-ReLU-Linear(256,C)", label="nearest GT box centre")


def nearest_object_labels(pred_centres: torch.Tensor, true_boxes: torch.Tensor, true_labels: torch.Tensor,
                          true_valid: Optional[torch.Tensor] = None):
    """Label of the nearest ground-truth object for each inferred object.

    ``pred_centres``: (B, K, 2) x, y pixels; ``true_boxes``: (B, N, 4) x0, y0, x1, y1;
    ``true_labels``: (B, N); ``true_valid``: (B, N) bool. Returns ``(labels (B, K) long,
    distance (B, K) float)``; label -1 (distance inf) in images without valid objects.
    """
    c = torch.as_tensor(pred_centres, dtype=torch.float32)
    tb = torch.as_tensor(true_boxes, dtype=torch.float32)
    tc = torch.stack([(tb[..., 0] + tb[..., 2]) / 2, (tb[..., 1] + tb[..., 3]) / 2], -1)
    d = torch.cdist(c, tc)  # (B, K, N)
    if true_valid is not None:
        d = d.masked_fill(~torch.as_tensor(true_valid, dtype=torch.bool)[:, None, :], float("inf"))
    dist, idx = d.min(-1)
    labels = torch.gather(torch.as_tensor(true_labels).long(), 1, idx)
    labels = torch.where(torch.isinf(dist), torch.full_like(labels, -1), labels)
    return labels, dist


def zwhat_classification_accuracy(features: torch.Tensor, labels: torch.Tensor, image_index: torch.Tensor,
                                  num_classes: int = 10, train_fraction: float = 0.8, hidden: int = 256,
                                  lr: float = 1e-3, batch_size: int = 256, epochs: int = 50,
                                  seed: int = 0) -> Dict:
    """Train the 2-layer MLP on objects of the first images and report test accuracy.

    ``features``: (M, D) z_what of the inferred objects; ``labels``: (M,) (entries < 0 are
    dropped); ``image_index``: (M,) index of the image each object comes from (the split is by
    image). Returns ``{"accuracy", "train_accuracy", "num_train", "num_test", "protocol"}``.
    """
    x = torch.as_tensor(features, dtype=torch.float32).detach().cpu()
    y = torch.as_tensor(labels).long().cpu()
    img = torch.as_tensor(image_index).long().cpu()
    keep = y >= 0
    x, y, img = x[keep], y[keep], img[keep]
    if len(x) == 0:
        raise ValueError("no labelled objects to classify")
    images = torch.unique(img)
    tr = torch.isin(img, images[:int(len(images) * train_fraction)])
    te = ~tr
    if tr.sum() == 0 or te.sum() == 0:
        raise ValueError(f"the split by image left {int(tr.sum())} training and {int(te.sum())} test objects")
    mean = x[tr].mean(0)
    std = x[tr].std(0).clamp_min(1e-6) if int(tr.sum()) > 1 else torch.ones(x.shape[1])
    x = (x - mean) / std
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    xt, yt = x[tr], y[tr]
    with torch.enable_grad():  # callers may run under no_grad
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=g)
            for s in range(0, len(xt), batch_size):
                i = perm[s:s + batch_size]
                loss = nn.functional.cross_entropy(mlp(xt[i]), yt[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        acc = float((mlp(x[te]).argmax(-1) == y[te]).float().mean())
        tr_acc = float((mlp(xt).argmax(-1) == yt).float().mean())
    protocol = dict(REPRESENTATION_PROTOCOL, train_fraction=train_fraction, hidden=hidden, lr=lr,
                    batch_size=batch_size, epochs=epochs, seed=seed)
    return dict(accuracy=acc, train_accuracy=tr_acc, num_train=int(tr.sum()), num_test=int(te.sum()),
                protocol=protocol)
