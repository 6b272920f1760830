"""D-Steps: how many training steps a real-vs-generated image classifier needs to tell them apart.

The fixed protocol (``DSTEPS_PROTOCOL``; also in ``docs/metrics.md``):

* Data: ``num_train`` real and ``num_train`` generated images for training and a disjoint
  held-out set of ``num_eval`` real and ``num_eval`` generated images for evaluation (defaults
  2000 / 500 each). Images are (C, H, W) in [0, 1] (generated images are clamped to [0, 1]);
  both sets must have the same shape.
* Classifier: 4 convolutions 4x4 stride 2 padding 1 with 16, 32, 64, 64 filters, each followed by
  LeakyReLU(0.2), then global average pooling and a linear layer to one logit (real = 1).
  PyTorch default initialisation under ``torch.manual_seed(seed)``.
* Optimiser: Adam, learning rate 1e-4, betas (0.9, 0.999), binary cross-entropy with logits.
* Batch: 32 = 16 real + 16 generated, drawn uniformly with replacement from the training images
  by a ``torch.Generator`` seeded with ``seed``.
* Evaluation: after every 40 steps, accuracy on the held-out set (logit > 0 = real).
* Result: the number of steps taken when held-out accuracy first reaches 0.9 (a multiple of 40,
  as in GNM's table), or the cap of 5000 steps with ``reached = False``. Higher is better
  (samples harder to tell from data). ``repeats > 1`` averages over seeds ``seed .. seed + r - 1``.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["DSTEPS_PROTOCOL", "Discriminator", "d_steps"]

DSTEPS_PROTOCOL = dict(
    threshold=0.9, batch_size=32, lr=1e-4, eval_every=40, max_steps=5000,
    num_train=2000, num_eval=500, seed=0,
    classifier="conv4x4/2 x4 [16,32,64,64] + LeakyReLU(0.2) + global avg pool + linear",
    optimizer="Adam(lr=1e-4, betas=(0.9, 0.999))",
)


class Discriminator(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        layers, c = [], channels
        for f in (16, 32, 64, 64):
            layers += [nn.Conv2d(c, f, 4, 2, 1), nn.LeakyReLU(0.2)]
            c = f
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(-1)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    correct = 0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            correct += int(((model(x[s:s + batch]) > 0).float() == y[s:s + batch]).sum())
    return correct / len(x)


def _one_run(real_tr, fake_tr, ev_x, ev_y, threshold, batch_size, lr, eval_every, max_steps, seed,
             progress) -> Dict:
    torch.manual_seed(seed)
    model = Discriminator(real_tr.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    half = batch_size // 2
    y = torch.cat([torch.ones(half), torch.zeros(batch_size - half)])
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max_steps, desc="D-Steps", leave=False)
    steps, acc = 0, 0.0
    try:
        while steps < max_steps:
            ir = torch.randint(len(real_tr), (half,), generator=gen)
            ig = torch.randint(len(fake_tr), (batch_size - half,), generator=gen)
            x = torch.cat([real_tr[ir], fake_tr[ig]])
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if bar is not None:
                bar.update(1)
            if steps % eval_every == 0:
                acc = _accuracy(model, ev_x, ev_y)
                history.append((steps, acc))
                if bar is not None:
                    bar.set_postfix(acc=f"{acc:.3f}")
                if acc >= threshold:
                    return dict(steps=steps, reached=True, accuracy=acc, history=history)
    finally:
        if bar is not None:
            bar.close()
    return dict(steps=max_steps, reached=False, accuracy=acc, history=history)


def d_steps(real: torch.Tensor, fake: torch.Tensor, *, threshold: float = 0.9, batch_size: int = 32,
            lr: float = 1e-4, eval_every: int = 40, max_steps: int = 5000, num_train: Optional[int] = 2000,
            num_eval: int = 500, seed: int = 0, repeats: int = 1, progress: bool = False) -> Dict:
    """Run the D-Steps protocol on ``real`` and ``fake`` images (N, C, H, W).

    The last ``num_eval`` images of each set are held out for evaluation; up to ``num_train``
    of the others train the classifier. Returns ``{"steps", "reached", "accuracy", "history",
    "runs", "protocol"}`` where ``steps`` is the mean over ``repeats`` runs.
    """
    real = torch.as_tensor(real, dtype=torch.float32).detach().cpu().clamp(0, 1)
    fake = torch.as_tensor(fake, dtype=torch.float32).detach().cpu().clamp(0, 1)
    if real.dim() != 4 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real {tuple(real.shape)} and generated {tuple(fake.shape)} images must be "
                         "(N, C, H, W) of the same image shape")
    if batch_size < 2 or eval_every < 1 or max_steps < 1:
        raise ValueError("batch_size must be >= 2, eval_every and max_steps >= 1")
    if min(len(real), len(fake)) <= num_eval:
        raise ValueError(f"need more than num_eval={num_eval} images of each kind, got "
                         f"{len(real)} real and {len(fake)} generated")
    ev_x = torch.cat([real[-num_eval:], fake[-num_eval:]])
    ev_y = torch.cat([torch.ones(num_eval), torch.zeros(num_eval)])
    real_tr, fake_tr = real[:-num_eval], fake[:-num_eval]
    if num_train is not None:
        real_tr, fake_tr = real_tr[:num_train], fake_tr[:num_train]
    with torch.enable_grad():  # callers may run under no_grad
        runs = [_one_run(real_tr, fake_tr, ev_x, ev_y, threshold, batch_size, lr, eval_every, max_steps,
                         seed + r, progress) for r in range(repeats)]
    protocol = dict(DSTEPS_PROTOCOL, threshold=threshold, batch_size=batch_size, lr=lr,
                    eval_every=eval_every, max_steps=max_steps, num_train=len(real_tr),
                    num_eval=num_eval, seed=seed, repeats=repeats)
    return dict(steps=sum(r["steps"] for r in runs) / len(runs), reached=all(r["reached"] for r in runs),
                accuracy=runs[-1]["accuracy"], history=runs[0]["history"], runs=runs, protocol=protocol)
