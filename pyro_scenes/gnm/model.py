"""GNM's generative model as a Pyro program (Jiang & Ahn 2020; supplement Algorithms 1 and 2)."""
from __future__ import annotations

import contextlib
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.gnm.config import GNMConfig, preset as _preset
from pyro_scenes.gnm.distributions import ConcreteBernoulli
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.gnm.networks import BackgroundDecoder, GaussianHead, GlimpseDecoder, StructDRAW, ZsNetwork
from pyro_scenes.gnm.render import RenderOptions, render_additive, render_alpha, render_options, where_from_raw
from pyro_scenes.images import check_call
from pyro_scenes.nn.stn import where_to_boxes

#: the per-cell and background sites that "mode" generation sets to their modes
STRUCTURE_SITES = ("z_pres", "z_where", "z_depth", "z_what", "z_bg")


class GNM(nn.Module):
    r"""Generative Neurosymbolic Machine: StructDRAW prior over a symbolic 4x4 object map.

    ``model(x)`` scores images ``x`` of shape ``(B, C, H, W)``; ``model(batch_size=n)`` samples
    ``n`` scenes as the authors do (stochastic z^g, the MODE of z^s and z_bg) and returns them.
    Either call returns the rendered mean image ``(..., B, C, H, W)``.

    Sample sites, in program order (plates: ``batch`` of size B at dim -2, ``cells`` of size
    G*G = 16 at dim -1; cell index = row * G + column):

    ==============  =====================  =======================================================
    site            value shape            distribution
    ==============  =====================  =======================================================
    ``z_g_1..L``    ``(B, 1, 32)``         StructDRAW prior ``N(MLP^int_dec(h_dec,l-1))``
    ``z_pres``      ``(B, 16)``            :class:`ConcreteBernoulli` (8.8 tanh logits); relaxed
                                           sample in training, analytic Bernoulli KL
    ``z_where``     ``(B, 16, 4)``         Normal, raw (scale logit, log ratio, shift x, shift y)
    ``z_depth``     ``(B, 16, 1)``         Normal
    ``z_what``      ``(B, 16, D)``         Normal, D = 20 (MNIST) / 64 (Arrow)
    ``z_bg``        ``(B, 1, 10)``         ``N(MLP(cat z^g))``, only with a background (Arrow)
    ``x``           ``(B, 1, C, H, W)``    ``Normal(render, sigma=0.2).to_event(3)``, observed
    ==============  =====================  =======================================================

    p(z^s | f) comes from :class:`~pyro_scenes.gnm.networks.ZsNetwork` applied to the structure
    map f; the guide applies the same network to the image encoding f^x (shared, as the authors).

    :param config: a :class:`GNMConfig` (default: the ``"cpu"`` preset); keyword overrides are
        applied on top, e.g. ``GNM(draw_steps=8)`` for GNM-8.
    """

    def __init__(self, config: Optional[GNMConfig] = None, **overrides):
        super().__init__()
        cfg = _preset("cpu") if config is None else config
        cfg = cfg.replace(**overrides) if overrides else cfg
        cfg.validate()
        self.cfg = cfg
        self.draw = StructDRAW(cfg)
        self.zs_net = ZsNetwork(cfg)
        self.glimpse_decoder = GlimpseDecoder(cfg)
        if cfg.background:
            self.bg_prior = GaussianHead(cfg.draw_steps * cfg.z_g_dim, cfg.p_bg_mlp, cfg.z_bg_dim)
            self.bg_decoder = BackgroundDecoder(cfg)

    @classmethod
    def preset(cls, name: str, **overrides) -> "GNM":
        """``GNM.preset("mnist")`` (also mnist4/mnist10/mnist4-10), ``"arrow"``, ``"cpu"``, ``"arrow-cpu"``."""
        return cls(_preset(name, **overrides))

    # ------------------------------------------------------------------ helpers
    def zs_distributions(self, params):
        """The per-cell distributions from :class:`ZsNetwork` parameters (shared by model and guide)."""
        return {
            "z_pres": ConcreteBernoulli(params["pres_logits"], self.cfg.pres_temperature),
            "z_where": dist.Normal(params["where_loc"], params["where_scale"]).to_event(1),
            "z_depth": dist.Normal(params["depth_loc"], params["depth_scale"]).to_event(1),
            "z_what": dist.Normal(params["what_loc"], params["what_scale"]).to_event(1),
        }

    def boxes(self, z_where_raw: torch.Tensor) -> torch.Tensor:
        """Raw z_where ``(..., 16, 4)`` -> pixel boxes ``(..., 16, 4)`` as (x0, y0, x1, y1)."""
        return where_to_boxes(where_from_raw(z_where_raw, self.cfg.grid), self.cfg.image_size)

    def render(self, z_pres, z_where, z_depth, z_what, z_bg=None, options: RenderOptions = RenderOptions()):
        """Algorithm 2: returns ``(image, foreground, alpha_map, background)`` (the last three
        ``None`` for additive rendering). Shapes as the sites (z_bg ``(..., 1, z_bg_dim)``)."""
        cfg = self.cfg
        where = where_from_raw(z_where, cfg.grid)
        appearance, alpha = self.glimpse_decoder(z_what)
        if options.pres_max is not None and not cfg.alpha:
            z_pres = z_pres.clamp(max=options.pres_max)
        if not cfg.alpha:
            image = render_additive(appearance, z_pres, where, cfg.image_size)
            bg = None
            if cfg.background:
                bg = self.bg_decoder(z_bg.squeeze(-2))
                image = image + bg
            return image, None, None, bg
        if cfg.background:
            bg = self.bg_decoder(z_bg.squeeze(-2))
        else:
            bg = z_depth.new_zeros((cfg.channels, cfg.image_size, cfg.image_size))
        image, fg, alpha_map = render_alpha(appearance, alpha, z_pres, z_depth, where, bg, cfg.image_size, cfg.eps, options)
        return image, fg, alpha_map, bg

    # ------------------------------------------------------------------ the program
    def forward(self, x: Optional[torch.Tensor] = None, batch_size: Optional[int] = None, mode: Optional[bool] = None):
        """Score ``x`` ``(B, C, H, W)`` or, with ``x=None``, sample ``batch_size`` scenes.

        :param mode: evaluate z^s and z_bg at their modes (default: True when sampling, False
            when scoring).
        """
        cfg = self.cfg
        pyro.module("gnm", self)
        B = self.check_input(x, batch_size)
        if mode is None:
            mode = x is None
        with contextlib.ExitStack() as stack:
            if mode:
                stack.enter_context(ModeSites(STRUCTURE_SITES))
            with pyro.plate("batch", B, dim=-2):
                state = self.draw.init_state((B,))
                z_g = []
                for l in range(cfg.draw_steps):
                    loc, scale = self.draw.prior(state[0])
                    z = pyro.sample(f"z_g_{l + 1}", dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))
                    z_g.append(z)
                    state = self.draw.step(z.squeeze(-2), state)
                zs = self.zs_distributions(self.zs_net(state[2]))
                with pyro.plate("cells", cfg.num_cells, dim=-1):
                    z_pres = pyro.sample("z_pres", zs["z_pres"])
                    z_where = pyro.sample("z_where", zs["z_where"])
                    z_depth = pyro.sample("z_depth", zs["z_depth"])
                    z_what = pyro.sample("z_what", zs["z_what"])
                z_bg = None
                if cfg.background:
                    loc, scale = self.bg_prior(torch.cat(torch.broadcast_tensors(*z_g), -1))
                    z_bg = pyro.sample("z_bg", dist.Normal(loc, scale).to_event(1))
                options = render_options(RenderOptions(), name="render")
                image = self.render(z_pres, z_where, z_depth, z_what, z_bg, options)[0]
                pyro.sample(
                    "x",
                    dist.Normal(image.unsqueeze(-4), cfg.sigma).to_event(3),
                    obs=None if x is None else x.unsqueeze(-4),
                )
        return image

    def check_input(self, x=None, batch_size=None, who: str = "GNM") -> int:
        """The batch size of a call: B of images ``x`` (float, ``(B, C, H, W)`` of this model's size,
        finite, in [0, 1]) or ``batch_size`` (an integer >= 1) when sampling; ``ValueError`` otherwise."""
        cfg = self.cfg
        return check_call(x, batch_size, (cfg.channels, cfg.image_size, cfg.image_size), who)

    @torch.no_grad()
    def sample(self, n: int, mode: bool = True) -> torch.Tensor:
        """``n`` generated scenes ``(n, C, H, W)`` (mode z^s by default, as the authors generate)."""
        return self(batch_size=n, mode=mode)
