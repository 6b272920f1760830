"""SPACE's image likelihood: a per-pixel mixture of the foreground and K background components
(Lin et al. 2020, eq. (5); docs/space.md)::

    p(x | z) = prod_pixels [ alpha N(x; mu_fg, sigma_fg) + (1 - alpha) sum_k m_k N(x; mu_k, sigma_bg) ]

with the channels of a pixel sharing its mixture weights.
"""
from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints

#: weights are clamped below at this value inside the log (alpha and masks may reach 0 exactly)
WEIGHT_FLOOR = 1e-10


class PixelMixture(TorchDistribution):
    """Per-pixel mixture of M Gaussian images.

    :param weights: ``(..., M, 1, H, W)``, summing to 1 over M;
    :param means: ``(..., M, C, H, W)``;
    :param scales: ``(M,)`` pixel stds of the components.

    ``event_shape`` is ``(C, H, W)``; ``batch_shape`` the leading dimensions. ``mean`` is
    ``sum_m w_m mu_m``; ``sample`` picks a component per pixel, then adds its Gaussian noise.
    """

    arg_constraints = {}
    support = constraints.real

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, scales: torch.Tensor, validate_args=None):
        lead = torch.broadcast_shapes(weights.shape[:-4], means.shape[:-4])
        M, C, H, W = means.shape[-4:]
        self.weights = weights.expand(lead + (M, 1, H, W))
        self.means = means.expand(lead + (M, C, H, W))
        self.scales = torch.as_tensor(scales, dtype=means.dtype, device=means.device)
        super().__init__(lead, torch.Size((C, H, W)), validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return (self.weights * self.means).sum(-4)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.weights.expand(batch_shape + self.weights.shape[-4:]),
                          self.means.expand(batch_shape + self.means.shape[-4:]), self.scales, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        scales = self.scales[:, None, None]
        sq = ((value.unsqueeze(-4) - self.means) ** 2).sum(-3)  # (..., M, H, W)
        C = self.means.shape[-3]
        normal = -0.5 * sq / scales ** 2 - C * (torch.log(scales) + 0.5 * math.log(2 * math.pi))
        log_w = torch.log(self.weights.squeeze(-3).clamp(min=WEIGHT_FLOOR))
        return torch.logsumexp(log_w + normal, -3).sum((-2, -1))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            w = self.weights.squeeze(-3).expand(shape + self.weights.shape[-4:-3] + self.weights.shape[-2:])
            k = torch.distributions.Categorical(probs=w.movedim(-3, -1)).sample()  # (..., H, W)
            idx = k[..., None, None, :, :].expand(shape + (1,) + self.means.shape[-3:])
            mu = torch.gather(self.means.expand(shape + self.means.shape[-4:]), -4, idx).squeeze(-4)
            sd = self.scales[k][..., None, :, :]
            return mu + sd * torch.randn_like(mu)
