"""Distributions of the layered (dead-leaves) scene model, ECON section 4.

* :class:`RegionBernoulli` - p(r_t | s_t, z_t, k_t) = Bernoulli(s_t * m~_k(z_t)), eq. (7);
* :class:`RegionMean` - q(r_t | x, s_t, k_t) = Bernoulli(r~) represented by its mean r~, the
  approximation of section 5.1 ("we approximate expectations w.r.t. q(r_t) ... using the
  Bernoulli means");
* :class:`LayeredNormal` - p(x | r_{1:T}, z_{1:T}, k_{1:T}), eq. (6);
* :class:`PresampledNormal` - a Normal whose reparameterised draw was made before the site.

The Bernoulli log-probability ``r log p + (1 - r) log(1 - p)`` is linear in ``r``. Evaluated at
the mean ``r~`` of q it is therefore the exact expectation under q, so that
``log q(r~) - log p(r~) = KL(q || p)``: with these two distributions Pyro's ELBO estimator
reproduces the analytic region KL of eq. (12) exactly.
"""
from __future__ import annotations

import math

import torch
from pyro.distributions import Normal, TorchDistribution, constraints
from pyro.distributions.util import broadcast_shape
from torch.distributions import kl_divergence, register_kl

#: probabilities are clamped to [EPS, 1 - EPS] inside logs; zero-scope pixels (q = p = 0, outside
#: the scope in ECON's region KL, eq. 12) then contribute exactly 0 with finite gradients.
EPS = 1e-6


def bernoulli_log_prob(value: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``value * log p + (1 - value) * log(1 - p)`` with ``p`` clamped; linear in ``value``."""
    p = probs.clamp(EPS, 1.0 - EPS)
    return value * torch.log(p) + (1.0 - value) * torch.log1p(-p)


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Pixel-wise KL(Bernoulli(q) || Bernoulli(p)), finite where q = p = 0 (eq. 12)."""
    return bernoulli_log_prob(q, q) - bernoulli_log_prob(q, p)


class RegionBernoulli(TorchDistribution):
    """Pixel-wise Bernoulli over a visible region, eq. (7): ``Bernoulli(s_t * m~(z_t))``.

    ``sample()`` draws a binary region. ``log_prob`` accepts soft regions in [0, 1] (the guide's
    Bernoulli means) through the linear extension of the Bernoulli log-probability.
    """

    arg_constraints = {"probs": constraints.unit_interval}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, probs: torch.Tensor, validate_args=None):
        self.probs = probs
        super().__init__(probs.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        new.probs = self.probs.expand(batch_shape)
        super(RegionBernoulli, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        return self.probs

    @property
    def variance(self):
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(self._extended_shape(sample_shape)))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return bernoulli_log_prob(value, self.probs)

    def entropy(self):
        return -bernoulli_log_prob(self.probs, self.probs)


class RegionMean(RegionBernoulli):
    """q(r_t | x, s_t, k_t) = Bernoulli(r~), drawn as its mean r~ (ECON section 5.1).

    The paper replaces expectations under q(r_t) by plugging in the Bernoulli means instead of
    sampling discrete regions; ``rsample`` returns ``r~`` (with its gradient). The KL against a
    :class:`RegionBernoulli` prior is registered and equals eq. (12).
    """

    has_rsample = True

    def rsample(self, sample_shape=torch.Size()):
        return self.probs.expand(self._extended_shape(sample_shape))

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape).detach()


@register_kl(RegionMean, RegionBernoulli)
def _kl_region(q, p):
    return bernoulli_kl(q.probs, p.probs)


class LayeredNormal(TorchDistribution):
    """Image likelihood of the layered model, eq. (6), pixel-wise (use ``.to_event(3)``).

    :param means: appearance means ``mu_{k_t}(z_t)``, shape ``(..., T, C, H, W)``.
    :param regions: visible regions ``r_t``, shape ``(..., T, 1, H, W)``.
    :param sigma: the pixel standard deviation sigma_x.

    For binary regions that partition the image this is ``Normal(sum_t r_t mu_t, sigma^2)``,
    eq. (6). For soft regions (the guide's means) the log-density is
    ``sum_t r_t log N(x; mu_t, sigma) + (1 - sum_t r_t) log N(x; 0, sigma)``: pixels no layer
    covers show the empty canvas (x = 0, section 2). It equals eq. (6) on binary regions and,
    for soft regions summing to one, ``-sum_t L^_x,t`` of eq. (10) plus the Gaussian normaliser
    ``-C H W log(sigma sqrt(2 pi))``, a constant (appendix A.1).
    """

    arg_constraints = {"means": constraints.real, "regions": constraints.unit_interval}
    support = constraints.real
    has_rsample = False

    def __init__(self, means: torch.Tensor, regions: torch.Tensor, sigma: float, validate_args=None):
        self.means, self.regions, self.sigma = means, regions, float(sigma)
        shape = broadcast_shape(means.shape, regions.shape)
        batch_shape = torch.Size(shape[:-4] + shape[-3:])
        super().__init__(batch_shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        lead, pix = batch_shape[:-3], batch_shape[-3:]
        T = self.means.shape[-4]
        new.means = self.means.expand(lead + (T,) + pix)
        new.regions = self.regions.expand(lead + (T, 1) + pix[1:])
        new.sigma = self.sigma
        super(LayeredNormal, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        return (self.regions * self.means).sum(-4).expand(self.batch_shape)

    @property
    def variance(self):
        return torch.full(self.batch_shape, self.sigma ** 2, device=self.means.device)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            return self.mean.expand(shape) + self.sigma * torch.randn(shape, device=self.means.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        norm = -math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        sq = (value.unsqueeze(-4) - self.means) ** 2  # (..., T, C, H, W)
        covered = self.regions.sum(-4)  # (..., 1, H, W)
        per_layer = (self.regions * sq).sum(-4)
        empty = (1.0 - covered) * value ** 2
        return norm - (per_layer + empty) / (2 * self.sigma ** 2)


class PresampledNormal(Normal):
    """``Normal(loc, scale)`` whose reparameterised draw is ``loc + scale * noise`` for given noise.

    ECON's competition (section 5.2) scores every expert on its own sample
    ``z~ = mu + sigma * eps`` before ``k_t`` is known; the winner's site must carry that same
    sample so that the loss is computed on the reconstruction that won. Density, KL and
    everything else are those of the Normal.
    """

    def __init__(self, loc, scale, noise, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        self.noise = noise.expand(self.batch_shape)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return PresampledNormal(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.noise.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        if sample_shape:
            raise ValueError("PresampledNormal holds exactly one draw; sample_shape must be empty")
        return self.loc + self.scale * self.noise


__all__ = [
    "EPS",
    "LayeredNormal",
    "PresampledNormal",
    "RegionBernoulli",
    "RegionMean",
    "bernoulli_kl",
    "bernoulli_log_prob",
    "kl_divergence",
]
