"""Weight latent sites by name: beta-VAE style KL weights and their annealing.

Pyro weights a term by ``poutine.scale``. To weight the KL of a latent site it must be scaled
in BOTH model and guide (TraceMeanField_ELBO applies the guide's scale to
an analytic KL, Trace_ELBO scales log p in the model and log q in the guide). ``ScaleSites`` is
one handler that is applied to both, so the two can never disagree.
"""
from __future__ import annotations

import fnmatch
from typing import Dict, Mapping

from pyro.poutine.messenger import Messenger

from inference.schedules import ScheduleLike, as_schedule


class ScaleSites(Messenger):
    """Multiply the log-density of every sample site whose name matches a pattern.

    :param scales: ``{pattern: weight or schedule}``; patterns are shell globs (``"z_g_*"``,
        ``"r_?"``). The first matching pattern wins. A schedule is a callable ``step -> float``.
    :param step: the training step at which schedules are evaluated.

    Example (ECON eq. 13: beta on the z-KLs, gamma on the region KLs)::

        with ScaleSites({"z_*": 9.54, "r_*": 0.52}):
            loss = elbo.differentiable_loss(model, guide, x)
    """

    def __init__(self, scales: Mapping[str, ScheduleLike], step: int = 0):
        super().__init__()
        self.schedules = {pattern: as_schedule(v) for pattern, v in scales.items()}
        self.step = int(step)

    def weight(self, name: str):
        """The weight applied to site ``name`` at the current step (None if no pattern matches)."""
        for pattern, schedule in self.schedules.items():
            if fnmatch.fnmatchcase(name, pattern):
                return schedule(self.step)
        return None

    def current(self) -> Dict[str, float]:
        """``{pattern: weight}`` at the current step, for logging."""
        return {pattern: s(self.step) for pattern, s in self.schedules.items()}

    def _process_message(self, msg):
        if msg["type"] != "sample":
            return
        w = self.weight(msg["name"])
        if w is not None and w != 1.0:
            msg["scale"] = w * msg["scale"]
