"""Anneal the temperature of relaxed discrete sites (GNM's z_pres: 1.0 -> 0.5 over steps 1k-20k)."""
from __future__ import annotations

import fnmatch

from pyro.poutine.messenger import Messenger

from inference.schedules import ScheduleLike, as_schedule


class RelaxationTemperature(Messenger):
    """Set the relaxation temperature of every sample site matching ``pattern`` at ``step``.

    Works on any distribution with a ``with_temperature(t)`` method (e.g.
    :class:`pyro_scenes.gnm.ConcreteBernoulli`); other sites are left alone. Apply it to the guide
    (where the relaxed sample is drawn) and, for consistency of the recorded distributions, to
    the model. A temperature of 0 gives hard (non-reparameterised) samples.

    Example (GNM's z_pres schedule, docs/gnm.md)::

        tau = RelaxationTemperature(Linear(1.0, 0.5, 1000, 20000), step=step)
        loss = elbo.differentiable_loss(tau(model), tau(guide), x)
    """

    def __init__(self, temperature: ScheduleLike, step: int = 0, pattern: str = "z_pres"):
        super().__init__()
        self.schedule = as_schedule(temperature)
        self.step = int(step)
        self.pattern = pattern

    @property
    def temperature(self) -> float:
        return float(self.schedule(self.step))

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if hasattr(fn, "with_temperature") and fnmatch.fnmatchcase(msg["name"], self.pattern):
            msg["fn"] = fn.with_temperature(self.temperature)
