"""Amortised guide for :class:`pyro_scenes.GNM` (supplement section 4.1, "Inference Model")."""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.gnm import GNM, ModeSites
from pyro_scenes.gnm.networks import GaussianHead, ImageEncoder, StructDRAWEncoder, flatten_map


class GNMGuide(nn.Module):
    """q(z^g | x) q(z^s | x) q(z_bg | x) for a :class:`~pyro_scenes.GNM` model.

    * image encoder (supplement Table 4; docs/gnm.md, "The guide"): ``x -> f^x`` (C x 4 x 4);
    * q(z^g_l | x): StructDRAW's encoder path (``ConvLSTM_enc`` on ``cat[h_dec, f^x, f^x - f]``,
      ``MLP^int_enc``), run together with the model's own StructDRAW decoder, which turns each
      posterior sample z^g_l into ``h_dec,l`` and the canvas ``f_l`` (Algorithm 1);
    * q(z^s | f^x): the model's :class:`~pyro_scenes.gnm.networks.ZsNetwork` (shared with
      p(z^s | f)); it does not see z^g;
    * q(z_bg | f^x): an MLP on the flattened encoding (background models only).

    Sites and their order are the model's (``z_g_1..L, z_pres, z_where, z_depth, z_what[, z_bg]``).
    The model is held by reference, not as a sub-module: ``guide.parameters()`` are the guide's
    own, so ``list(model.parameters()) + list(guide.parameters())`` has no duplicates.
    """

    def __init__(self, model: GNM):
        super().__init__()
        if not isinstance(model, GNM):
            raise TypeError(f"GNMGuide needs a pyro_scenes.GNM model, got {type(model).__name__}")
        object.__setattr__(self, "model", model)  # not registered: the model owns its parameters
        cfg = model.cfg
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg)
        self.draw_encoder = StructDRAWEncoder(cfg)
        if cfg.background:
            self.bg_net = GaussianHead(cfg.num_cells * cfg.hidden, cfg.q_bg_mlp, cfg.z_bg_dim)

    def forward(self, x: torch.Tensor, batch_size: Optional[int] = None, mode: Optional[bool] = None):
        """Sample all latents given images ``x`` ``(B, C, H, W)``; with ``mode=True`` every latent
        is set to its posterior mode instead (deterministic inference)."""
        if x is None:
            raise ValueError("GNMGuide needs the images x")
        model, cfg = self.model, self.cfg
        B = model.check_input(x, batch_size, who="GNMGuide")
        pyro.module("gnm_guide", self)
        fx = self.encoder(x)
        with contextlib.ExitStack() as stack:
            if mode:
                stack.enter_context(ModeSites())
            with pyro.plate("batch", B, dim=-2):
                dec_state = model.draw.init_state((B,))
                enc_state = self.draw_encoder.init_state((B,))
                for l in range(cfg.draw_steps):
                    loc, scale, enc_state = self.draw_encoder(fx, dec_state, enc_state)
                    z = pyro.sample(f"z_g_{l + 1}", dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))
                    if l + 1 < cfg.draw_steps:  # the last canvas update is not needed by q
                        dec_state = model.draw.step(z.squeeze(-2), dec_state)
                zs = model.zs_distributions(model.zs_net(fx))
                with pyro.plate("cells", cfg.num_cells, dim=-1):
                    z_pres = pyro.sample("z_pres", zs["z_pres"])
                    pyro.sample("z_where", zs["z_where"])
                    pyro.sample("z_depth", zs["z_depth"])
                    pyro.sample("z_what", zs["z_what"])
                if cfg.background:
                    loc, scale = self.bg_net(flatten_map(fx))
                    pyro.sample("z_bg", dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))
        return z_pres

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Posterior summaries for metrics and figures (no sampling).

        Returns ``pres_prob (B, 16)``, ``pres (B, 16)`` (= pres_prob > 0.5), ``boxes (B, 16, 4)``
        in pixels (x0, y0, x1, y1) from the mean z_where, ``z_where`` (raw means), ``z_what``
        ``(B, 16, D)``, ``z_depth`` ``(B, 16, 1)``, ``z_g`` ``(B, L, 32)`` (posterior means, each step
        conditioned on the previous means) and ``z_bg`` ``(B, 10)`` when there is a background.
        """
        model, cfg = self.model, self.cfg
        model.check_input(x, who="GNMGuide")
        fx = self.encoder(x)
        p = model.zs_net(fx)
        out = {
            "pres_prob": torch.sigmoid(p["pres_logits"]),
            "pres_logits": p["pres_logits"],
            "z_where": p["where_loc"],
            "z_what": p["what_loc"],
            "z_depth": p["depth_loc"],
        }
        out["pres"] = (out["pres_prob"] > 0.5).to(x.dtype)
        out["boxes"] = model.boxes(p["where_loc"])
        dec_state = model.draw.init_state((x.shape[0],))
        enc_state = self.draw_encoder.init_state((x.shape[0],))
        z_g = []
        for l in range(cfg.draw_steps):
            loc, _, enc_state = self.draw_encoder(fx, dec_state, enc_state)
            z_g.append(loc)
            dec_state = model.draw.step(loc, dec_state)
        out["z_g"] = torch.stack(z_g, -2)
        if cfg.background:
            out["z_bg"] = self.bg_net(flatten_map(fx))[0]
        return out
