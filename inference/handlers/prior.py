"""Anneal the probability of a fixed Bernoulli prior (SPACE's z_pres prior: 0.1 -> 0.01)."""
from __future__ import annotations

import fnmatch

import torch
from pyro.poutine.messenger import Messenger

from inference.schedules import ScheduleLike, as_schedule


class BernoulliPrior(Messenger):
    """Set the probability of every sample site matching ``pattern`` at ``step``, keeping its
    distribution's type and relaxation temperature. Apply it to the MODEL only: it replaces a
    prior; the guide's posterior is left alone.

    Works on distributions built as ``type(fn)(logits, temperature)``
    (:class:`pyro_scenes.gnm.ConcreteBernoulli`). Example (docs/space.md)::

        prior = BernoulliPrior(Linear(0.1, 0.01, 0, 4000), step=step)
        loss = elbo.differentiable_loss(prior(model), guide, x)
    """

    def __init__(self, probs: ScheduleLike, step: int = 0, pattern: str = "z_pres"):
        super().__init__()
        self.schedule = as_schedule(probs)
        self.step = int(step)
        self.pattern = pattern

    @property
    def probs(self) -> float:
        return float(self.schedule(self.step))

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if fnmatch.fnmatchcase(msg["name"], self.pattern) and hasattr(fn, "temperature") and not msg["is_observed"]:
            logits = torch.logit(torch.tensor(self.probs, dtype=fn.logits.dtype, device=fn.logits.device))
            msg["fn"] = type(fn)(logits.expand(fn.logits.shape), fn.temperature)
