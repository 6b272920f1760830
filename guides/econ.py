"""Amortised posterior of ECON, section 4.2 and 5.

    q(r, z | x, k) = prod_t q(r_t | x, s_t, k_t) q(z_t | x, r_t, k_t)

Inference runs from the front layer t = T down to 1. At each step every expert attends
(region r~ = s_t * sigmoid(a_k(x, s_t)), eq. 9), encodes its region (q(z_t | x, r~, k)) and
decodes its own sample z~ = mu + sigma * eps. These K proposals are scored (without gradients)
by the competition objective of section 5.2, ``lambda L^_x,t(k) + L^_r,t(k)``
(:func:`~pyro_scenes.econ.competition_score`; the guide owns lambda), and the scores are
attached to the site ``k_t`` as ``infer["competition_scores"]``; the site's own distribution is
the stochastic competition ``q(k_t) = softmax(-score)``. During training the
:class:`inference.handlers.Competition` messenger replaces it by a point mass at the winner
so only the winner's terms enter the loss; the winner's region and posterior are then
recomputed with its own weights alone, so backpropagation never touches the losers (and costs
one expert, not K). The last step (t = 1) takes the remaining scope as
region for every expert (footnote 7). The scope update is eq. (14) with the attention output
alpha: ``s_{t-1} = s_t * (1 - alpha) = s_t - r~_t``, so the regions partition the image.

Given regions (generative MONet, section 5.1 and Figure 5): ``guide(x, regions=r)`` with ``r`` of
shape ``(B, T, 1, H, W)`` (layer t = 1, the back, first) uses ``r_t`` in place of every expert's
attention: the experts compete on it and the winner encodes it; the guide then has no site
``r_t``. Condition the model's ``r_t`` sites on the same regions with ``pyro.condition``
(:func:`inference.objectives.econ_loss` does both). The guide takes them as an argument, not
through ``pyro.condition``, because q(z_t | x, r_t, k_t) needs r_t before the site ``z_t`` while
``TraceMeanField_ELBO`` wants the guide's sites in the model's order (``z_t`` before ``r_t``).
"""
from __future__ import annotations

from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.distributions import PresampledNormal, RegionMean, bernoulli_kl
from pyro_scenes.econ import ECON, competition_score
from pyro_scenes.nn.expert_nets import ExpertAttention, ExpertEncoder


def take_expert(a: torch.Tensor, k: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Pick expert ``k`` from ``a`` of shape ``(..., B, K, *event)``; ``k`` is ``(..., B)`` (broadcast)."""
    K_dim = a.dim() - event_dim - 1
    event = a.shape[K_dim + 1 :]
    batch = torch.broadcast_shapes(a.shape[:K_dim], k.shape)
    a = a.expand(*batch, a.shape[K_dim], *event)
    index = k.expand(batch).reshape(*batch, 1, *([1] * event_dim)).expand(*batch, 1, *event)
    return a.gather(len(batch), index).squeeze(len(batch))


class ECONGuide(nn.Module):
    """q(r_{1:T}, z_{1:T}, k_{1:T} | x) for an :class:`~pyro_scenes.ECON` model.

    ``guide = ECONGuide(model)``; the guide owns the attention nets (psi) and encoders (phi) of
    the K experts and uses the model's decoders (theta) to score the competition.

    :param attention_filters: U-Net filters (paper: 32, giving 4-32-64-64-64).
    :param attention_blocks: U-Net down/up blocks (paper: 4).
    :param encoder_features: encoder channels (C.2.1).
    :param encoder_layers: encoder conv blocks (C.2.1); each halves the resolution.
    :param competition_lambda: lambda, the weight of the appearance term L_x in the competition
        objective (the paper uses L_x + L_r for unique colours and L_r alone, lambda = 0, for
        random colours).
    :param competition_per_pixel: score each expert per pixel of its region,
        ``(lambda L_x + L_r) / |r~_k|`` (with ``|r~_k| = sum r~_k``, at least 1), instead of summed
        over it. The summed score favours the expert with the smallest region whatever its fit
        (docs/econ.md).
    """

    def __init__(
        self,
        model: ECON,
        attention_filters: int = 32,
        attention_blocks: int = 4,
        encoder_features: int = 32,
        encoder_layers: int = 4,
        competition_lambda: float = 1.0,
        competition_per_pixel: bool = False,
    ):
        super().__init__()
        if not isinstance(model, ECON):
            raise TypeError(f"ECONGuide needs an ECON model, got {type(model).__name__}")
        self._model = [model]  # a plain list: the model's parameters stay the model's
        K, C, S = model.num_experts, model.channels, model.image_size
        self.attention = ExpertAttention(K, C + 1, S, attention_filters, attention_blocks)
        self.encoder = ExpertEncoder(K, C + 1, S, model.latent_dim, encoder_features, encoder_layers)
        if not competition_lambda >= 0:
            raise ValueError(f"ECONGuide: competition_lambda must be >= 0, got {competition_lambda}")
        self.competition_lambda = float(competition_lambda)
        self.competition_per_pixel = bool(competition_per_pixel)

    @property
    def model(self) -> ECON:
        return self._model[0]

    def propose(self, x: torch.Tensor, scope: torch.Tensor, last: bool,
                given: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Every expert's explanation of the scope: attention, encoding, decoding, competition terms.

        ``x`` (B,C,H,W), ``scope`` (..., B, 1, H, W) -> tensors of shape (..., B, K, ...).
        ``given`` (..., B, 1, H, W): a region that every expert takes instead of attending.
        """
        model = self.model
        K, H = model.num_experts, model.image_size
        lead = scope.shape[:-3]
        xs = x.expand(*lead, *x.shape[-3:]).reshape(-1, *x.shape[-3:])
        s = scope.reshape(-1, 1, H, H)
        if given is not None:
            regions = given.expand(*lead, 1, H, H).reshape(-1, 1, 1, H, H).expand(-1, K, 1, H, H)
        elif last:  # footnote 7: the remaining scope is every expert's region
            regions = s.unsqueeze(1).expand(-1, K, 1, H, H)
        else:
            regions = s.unsqueeze(1) * torch.sigmoid(self.attention(xs, s))
        loc, log_var = self.encoder(xs, regions)
        scale = torch.exp(0.5 * log_var)
        noise = torch.randn_like(loc)
        z = loc + scale * noise
        mu, shape = model.decoder(z)
        sq = (xs.unsqueeze(1) - mu) ** 2
        L_x = (regions * sq).sum((-3, -2, -1)) / (2 * model.sigma_x ** 2)  # eq. (10)
        L_r = bernoulli_kl(regions, s.unsqueeze(1) * shape).sum((-3, -2, -1))  # eq. (12)
        area = regions.sum((-3, -2, -1))  # for a per-pixel competition (inference.handlers.Competition)
        out = dict(regions=regions, loc=loc, scale=scale, noise=noise, mu=mu, shape=shape, L_x=L_x, L_r=L_r, area=area)
        return {name: v.reshape(*lead, K, *v.shape[2:]) for name, v in out.items()}

    def attend(self, x: torch.Tensor, scope: torch.Tensor, k: torch.Tensor, last: bool) -> torch.Tensor:
        """The winners' region r~ = s_t * sigmoid(a_k(x, s_t)) (eq. 9; the scope itself at the last
        step), with gradients. Only the chosen expert of each item is evaluated (per-item
        weights), so backpropagation touches the winners alone. ``k`` (..., B) -> (..., B, 1, H, W).
        """
        H = self.model.image_size
        batch = torch.broadcast_shapes(scope.shape[:-3], k.shape)
        s = scope.expand(*batch, 1, H, H)
        if last:
            return s
        xs = x.expand(*batch, *x.shape[-3:]).reshape(-1, *x.shape[-3:])
        a = self.attention(xs, s.reshape(-1, 1, H, H), experts=k.expand(batch).reshape(-1))
        return s * torch.sigmoid(a.reshape(*batch, 1, H, H))

    def encode(self, x: torch.Tensor, region: torch.Tensor, k: torch.Tensor):
        """q(z_t | x, r_t, k_t): the winners' encoders on their regions -> loc, scale (..., B, L)."""
        H = self.model.image_size
        batch = torch.broadcast_shapes(region.shape[:-3], k.shape)
        xs = x.expand(*batch, *x.shape[-3:]).reshape(-1, *x.shape[-3:])
        r = region.expand(*batch, 1, H, H).reshape(-1, 1, H, H)
        loc, log_var = self.encoder(xs, r, experts=k.expand(batch).reshape(-1))
        return loc.reshape(*batch, -1), torch.exp(0.5 * log_var).reshape(*batch, -1)

    def forward(self, x: torch.Tensor, batch_size: Optional[int] = None, num_layers: Optional[int] = None,
                regions: Optional[torch.Tensor] = None) -> torch.Tensor:
        model = self.model
        if x is None:
            raise ValueError("ECONGuide infers from images: pass x")
        model.check_images(x)
        T = model.num_layers if num_layers is None else int(num_layers)
        B, H = x.shape[0], model.image_size
        if regions is not None and regions.shape != (B, T, 1, H, H):
            raise ValueError(f"ECONGuide: regions must have shape {(B, T, 1, H, H)} (batch, layer t = 1..T, 1, H, W), "
                             f"got {tuple(regions.shape)}")
        pyro.module("econ_guide", self)
        with pyro.plate("batch", B, dim=-1):
            scope = x.new_ones(B, 1, H, H)
            for t in range(T, 0, -1):
                last = t == 1
                given = None if regions is None else regions[:, t - 1].to(x.dtype)
                with torch.no_grad():  # the competition only scores; it is not differentiated
                    p = self.propose(x, scope, last, given)
                score = competition_score(p, self.competition_lambda, self.competition_per_pixel)
                k = pyro.sample(f"k_{t}", dist.Categorical(logits=-score), infer={"competition_scores": score})
                region = self.attend(x, scope, k, last) if given is None else given
                loc, scale = self.encode(x, region, k)
                pyro.sample(f"z_{t}", PresampledNormal(loc, scale, take_expert(p["noise"], k, 1)).to_event(1))
                # given regions are observed in the model (pyro.condition), so they are no guide site
                r = pyro.sample(f"r_{t}", RegionMean(region).to_event(3)) if given is None else given
                scope = scope - r
        return scope
