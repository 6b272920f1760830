"""Auxiliary KL terms against FIXED priors, added to the ELBO loss from the guide (GNM
supplement eqs. (3)-(5); docs/gnm.md, "Auxiliary KLs").

Design: a messenger on the GUIDE. After each listed guide site is sampled it computes
``weight(step) * KL(q_site || prior(step))`` -- optionally gated (multiplied) by the value of an
earlier site, e.g. GNM's relaxed ``z_pres`` sample, keeping its gradient -- and emits it as
``pyro.factor("aux_kl_<site>", +kl, has_rsample=True)`` at the same plates. A guide-side factor is
an auxiliary site, and every ELBO in Pyro subtracts a guide factor from the ELBO, i.e. ADDS it to
the loss; ``has_rsample=True`` keeps it a pathwise (reparameterised) term. So

    loss = -ELBO + sum_sites weight * KL(q || fixed prior)

without touching the model, the guide or the ELBO implementation. The factor sites are named
``aux_kl_<site>`` and can be inspected in a guide trace (or weighted further by ``ScaleSites``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Union

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import Distribution, kl_divergence

from inference.schedules import ScheduleLike, as_schedule

PriorLike = Union[Distribution, Callable[[int], Distribution]]


@dataclass
class AuxTerm:
    """One auxiliary KL: ``weight(step) * KL(q_site || prior) [* clamp(gate value, min=gate_min)]``.

    :param prior: a fixed distribution with the site's event shape, or ``step -> distribution``
        (for an annealed prior such as Bernoulli(rho(step))).
    :param weight: a number or a schedule ``step -> float``.
    :param gate: name of an earlier guide site whose sample multiplies the KL (gradient kept).
    :param gate_min: lower clamp on the gate value (the GNM authors use 1e-5); None for none.
    """

    prior: PriorLike
    weight: ScheduleLike = 1.0
    gate: Optional[str] = None
    gate_min: Optional[float] = None


class AuxiliaryKL(Messenger):
    """Add ``weight * KL(q || fixed prior)`` for guide sites to the loss (see module docstring).

    :param terms: ``{site name: AuxTerm}``.
    :param step: training step at which priors and weights are evaluated.

    After a run, :attr:`values` holds each term's batch sum (detached floats) for logging.
    """

    PREFIX = "aux_kl_"

    def __init__(self, terms: Mapping[str, AuxTerm], step: int = 0):
        super().__init__()
        self.terms = dict(terms)
        self.step = int(step)
        self._gates = {t.gate for t in self.terms.values() if t.gate}
        self._gate_values: Dict[str, torch.Tensor] = {}
        self.values: Dict[str, float] = {}

    def __enter__(self):
        self._gate_values = {}
        self.values = {}
        return super().__enter__()

    def prior(self, name: str) -> Distribution:
        p = self.terms[name].prior
        return p if isinstance(p, Distribution) else p(self.step)

    def weight(self, name: str) -> float:
        return float(as_schedule(self.terms[name].weight)(self.step))

    def _postprocess_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name = msg["name"]
        if name in self._gates:
            self._gate_values[name] = msg["value"]
        term = self.terms.get(name)
        if term is None:
            return
        kl = kl_divergence(msg["fn"], self.prior(name))
        if term.gate is not None:
            if term.gate not in self._gate_values:
                raise RuntimeError(f"AuxiliaryKL: gate site {term.gate!r} must be sampled before {name!r}")
            gate = self._gate_values[term.gate]
            kl = kl * (gate if term.gate_min is None else gate.clamp(min=term.gate_min))
        kl = self.weight(name) * kl
        self.values[name] = float(kl.detach().sum())
        pyro.factor(self.PREFIX + name, kl, has_rsample=True)
