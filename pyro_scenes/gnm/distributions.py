"""The z_pres distribution: a Bernoulli whose reparameterised sample is its Concrete relaxation.

GNM (Jiang & Ahn 2020; docs/gnm.md) samples ``z_pres`` from a relaxed Bernoulli (Concrete, Maddison et al. 2017) at a
temperature annealed from 1.0 to 0.5, but scores it with the ANALYTIC KL between the two
Bernoulli distributions (posterior and prior probabilities), not a Monte-Carlo estimate from
Concrete densities. :class:`ConcreteBernoulli` expresses exactly that in Pyro:

* ``rsample()`` draws the Concrete relaxation ``sigmoid((logits + logistic noise) / temperature)``
  (with ``temperature == 0``, ``sample()`` draws a hard Bernoulli value and the distribution is not
  reparameterised);
* ``kl_divergence(ConcreteBernoulli, ConcreteBernoulli)`` (and against a plain ``Bernoulli``) is the
  Bernoulli KL between the probabilities, registered with :func:`torch.distributions.kl.register_kl`,
  so :class:`pyro.infer.TraceMeanField_ELBO` uses it;
* ``log_prob(z) = z log p + (1 - z) log(1 - p)`` (minus the binary cross-entropy): the exact
  Bernoulli log-mass at hard values and the authors' convention for importance weights at relaxed
  values. It is NOT the Concrete density; the ELBO never uses it (the KL above is analytic).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import Bernoulli, TorchDistribution
from torch.distributions import constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all


class ConcreteBernoulli(TorchDistribution):
    """``Bernoulli(logits)`` sampled through its Concrete relaxation at ``temperature``.

    :param logits: log-odds of presence.
    :param temperature: Concrete temperature (> 0: reparameterised relaxed samples in (0, 1);
        0: hard samples in {0, 1}, not reparameterised).
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval

    def __init__(self, logits: torch.Tensor, temperature: float = 0.5, validate_args=None):
        (self.logits,) = broadcast_all(logits)
        self.temperature = float(temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        super().__init__(self.logits.shape, torch.Size(), validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        return self.temperature > 0

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def mode(self) -> torch.Tensor:
        """``1`` where ``logits > 0`` (GNM's generation rule)."""
        return (self.logits > 0).to(self.logits.dtype)

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return p * (1 - p)

    def with_temperature(self, temperature: float) -> "ConcreteBernoulli":
        """The same Bernoulli relaxed at another temperature."""
        if float(temperature) == self.temperature:
            return self
        return type(self)(self.logits, temperature, validate_args=self._validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.logits.expand(batch_shape), self.temperature, validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        if not self.has_rsample:
            raise NotImplementedError("ConcreteBernoulli at temperature 0 draws hard samples; use .sample()")
        shape = self._extended_shape(sample_shape)
        tiny = torch.finfo(self.logits.dtype).tiny
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(tiny, 1 - torch.finfo(self.logits.dtype).eps)
        noise = u.log() - (-u).log1p()
        return torch.sigmoid((self.logits + noise) / self.temperature)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        if self.has_rsample:
            with torch.no_grad():
                return self.rsample(sample_shape)
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        return value * logits - F.softplus(logits)

    def entropy(self) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")


def bernoulli_kl_logits(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(q) || Bernoulli(p)) from logits, numerically stable."""
    q = torch.sigmoid(q_logits)
    log_q1, log_q0 = F.logsigmoid(q_logits), F.logsigmoid(-q_logits)
    log_p1, log_p0 = F.logsigmoid(p_logits), F.logsigmoid(-p_logits)
    return q * (log_q1 - log_p1) + (1 - q) * (log_q0 - log_p0)


@register_kl(ConcreteBernoulli, ConcreteBernoulli)
def _kl_concrete_concrete(q, p):
    return bernoulli_kl_logits(q.logits, p.logits)


@register_kl(ConcreteBernoulli, Bernoulli)
def _kl_concrete_bernoulli(q, p):
    return bernoulli_kl_logits(q.logits, p.logits)


@register_kl(ConcreteBernoulli, torch.distributions.Bernoulli)
def _kl_concrete_torch_bernoulli(q, p):
    return bernoulli_kl_logits(q.logits, p.logits)
