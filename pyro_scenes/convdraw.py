"""The ConvDRAW baseline of GNM (Gregor et al. 2016 as configured in Jiang & Ahn 2020, supplement
section 4.2 and Table 9; docs/baselines.md).

StructDRAW (:class:`~pyro_scenes.gnm.networks.StructDRAW`) without its interaction MLPs: the
latent of each step is a map z_l (Z x G x G) and both the prior and the posterior of z_l are
2-layer CNNs ([128, 2 Z], kernel 3) on a ConvLSTM state. With ``f_0 = 0``::

    z_l ~ N(CNN_prior(h_dec,l-1))                                  (prior;  q: CNN_post(h_enc,l))
    h_dec,l = ConvLSTM_dec(z_l, h_dec,l-1)
    f_l = f_l-1 + CNN_out(h_dec,l)                                 l = 1..L
    x ~ N(sigmoid(Decoder(f_L)), sigma^2 I)                        (Decoder: Table 9)

and the guide's ``h_enc,l = ConvLSTM_enc(cat[h_dec,l-1, f^x, f^x - f_l-1], h_enc,l-1)`` on GNM's
image encoding f^x (Table 4), as StructDRAW's. As in ConvDRAW (and unlike StructDRAW in the
authors' code) the decoder LSTM reads z_l alone; the canvas reaches q through ``f^x - f_l-1``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_scenes.codec import check_codec, encoded_side
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.images import check_call
from pyro_scenes.nn.convlstm import ConvLSTMCell
from pyro_scenes.nn.subpixel import ConvStack, SubPixelStack
from pyro_scenes.presets import pick


@dataclass
class ConvDRAWConfig:
    """Every architectural setting of :class:`ConvDRAW` and :class:`guides.ConvDRAWGuide`.

    Defaults are the paper's MNIST scale (128x128, 1 channel, hidden C = 64 as GNM's MNIST
    encoding); ``PAPER_ARROW`` has C = 128. Parameter counts in docs/baselines.md.
    """

    image_size: int = 128
    channels: int = 1
    #: image encoder (guide), supplement Table 4 with the last three widths = hidden
    enc_filters: Tuple[int, ...] = (16, 16, 32, 32, 64, 64, 64, 64, 64)
    enc_kernels: Tuple[int, ...] = (4, 3, 4, 3, 4, 3, 4, 3, 4)
    enc_strides: Tuple[int, ...] = (2, 1, 2, 1, 2, 1, 2, 1, 2)
    draw_steps: int = 4
    #: channels Z of each step's latent map z_l (G x G)
    z_channels: int = 32
    #: first width of the prior and posterior CNNs (the second is 2 Z), kernel ``head_kernel``
    head_filters: int = 128
    head_kernel: int = 3
    lstm_kernel: int = 3
    out_kernel: int = 3
    #: decoder, supplement Table 9: from the canvas f_L (C x G x G); sub-pixel convs, ReLU +
    #: GroupNorm(1), the last to the image's channels
    dec_filters: Tuple[int, ...] = (128, 64, 64, 32, 32, 16, 16, 16, 16, 8, 1)
    dec_kernels: Tuple[int, ...] = (3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3)
    dec_upscales: Tuple[int, ...] = (1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
    sigma: float = 0.2

    @property
    def hidden(self) -> int:
        """C: channels of the image encoding, the ConvLSTM states and the canvas."""
        return int(self.enc_filters[-1])

    @property
    def grid(self) -> int:
        """G: side of the image encoding and of the latent maps."""
        return encoded_side(self)

    def replace(self, **overrides) -> "ConvDRAWConfig":
        return dataclasses.replace(self, **overrides)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the inconsistent setting."""
        if self.draw_steps < 1:
            raise ValueError("ConvDRAW setting 'draw_steps': must be >= 1")
        check_codec(self, "ConvDRAW", decoder_input_side=self.grid)


def _rgb(cfg: ConvDRAWConfig) -> ConvDRAWConfig:
    return cfg.replace(channels=3, dec_filters=cfg.dec_filters[:-1] + (3,))


#: the paper's scale (supplement Tables 3, 4, 7, 9): MNIST C = 64, Arrow C = 128 (as GNM's encodings)
PAPER = ConvDRAWConfig()
PAPER_ARROW = _rgb(PAPER.replace(enc_filters=(16, 16, 32, 32, 64, 64, 128, 128, 128)))
#: 64x64 for training on a CPU: GNM's CPU encoder (C = 32, pyro_scenes.gnm.config.CPU) and
#: Table 9's decoder without its last 2x block
CPU = ConvDRAWConfig(image_size=64, enc_filters=(16, 16, 32, 32, 32, 32, 32, 32, 32), enc_kernels=(4, 3, 4, 3, 4, 3, 4, 3, 3),
                     enc_strides=(2, 1, 2, 1, 2, 1, 2, 1, 1), head_filters=64,
                     dec_filters=(128, 64, 64, 32, 32, 16, 16, 8, 1), dec_kernels=(3, 1, 3, 1, 3, 1, 3, 1, 3),
                     dec_upscales=(1, 2, 1, 2, 1, 2, 1, 2, 1))
CPU_ARROW = _rgb(CPU)
#: 32x32, for tests (not meant to be trained)
TINY = ConvDRAWConfig(image_size=32, enc_filters=(8, 8, 8), enc_kernels=(4, 4, 4), enc_strides=(2, 2, 2), draw_steps=2,
                      z_channels=2, head_filters=8, dec_filters=(8, 4, 1), dec_kernels=(3, 1, 3), dec_upscales=(1, 4, 2))

PRESETS = {"paper": PAPER, "paper-arrow": PAPER_ARROW, "cpu": CPU, "arrow-cpu": CPU_ARROW, "tiny": TINY}


def preset(name: str, **overrides) -> ConvDRAWConfig:
    """A named configuration with keyword overrides, e.g. ``preset("cpu", draw_steps=8)`` (ConvDRAW-8)."""
    return pick(PRESETS, name, "ConvDRAW", **overrides)


class ConvGaussianHead(nn.Module):
    """A 2-layer CNN ``[filters, 2 Z]`` (CELU + GroupNorm between) -> ``(mean, softplus std)`` maps of Z channels."""

    def __init__(self, in_channels: int, filters: int, z_channels: int, kernel: int):
        super().__init__()
        self.net = ConvStack(in_channels, [filters, 2 * z_channels], [kernel, kernel], groups=1, norm_act_final=False)

    def forward(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.net(h).chunk(2, -3)
        return mean, F.softplus(std)


class ConvDRAWDecoderCore(nn.Module):
    """The generative path: the prior CNN, ``ConvLSTM_dec`` and the canvas update (the guide
    runs :meth:`step` on its samples to get ``h_dec`` and the canvas for the next posterior step)."""

    def __init__(self, cfg: ConvDRAWConfig):
        super().__init__()
        C, G = cfg.hidden, cfg.grid
        self.prior_net = ConvGaussianHead(C, cfg.head_filters, cfg.z_channels, cfg.head_kernel)
        self.lstm = ConvLSTMCell(cfg.z_channels, C, cfg.lstm_kernel, G)
        self.out_cnn = ConvStack(C, [C], [cfg.out_kernel], groups=0, norm_act_final=False)

    def init_state(self, batch_shape) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h_dec,0, c_dec,0, f_0)``: the learned initial LSTM state and an empty canvas."""
        h, c = self.lstm.init_state(batch_shape)
        return h, c, torch.zeros_like(h)

    def prior(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.prior_net(h)

    def step(self, z: torch.Tensor, state):
        h, c, f = state
        h, c = self.lstm(z, (h, c))
        return h, c, f + self.out_cnn(h)


class ConvDRAW(nn.Module):
    r"""The ConvDRAW baseline: ``model(x)`` scores images ``(B, C, H, W)``; ``model(batch_size=n)``
    samples ``n``. Either call returns the mean image ``(..., B, C, H, W)``.

    ==============  ==================  ===============================================
    site            value shape         distribution
    ==============  ==================  ===============================================
    ``z_1..L``      ``(B, Z, G, G)``    ``N(CNN_prior(h_dec,l-1)).to_event(3)``
    ``x``           ``(B, C, H, W)``    ``N(sigmoid(Decoder(f_L)), sigma).to_event(3)``
    ==============  ==================  ===============================================

    Plate: ``batch`` (dim -1). ``ConvDRAW(draw_steps=8)`` is ConvDRAW-8.
    """

    def __init__(self, config: Optional[ConvDRAWConfig] = None, **overrides):
        super().__init__()
        cfg = PAPER if config is None else config
        cfg = cfg.replace(**overrides) if overrides else cfg
        cfg.validate()
        self.cfg = cfg
        self.draw = ConvDRAWDecoderCore(cfg)
        n = len(cfg.dec_filters)
        self.decoder = SubPixelStack(cfg.hidden, cfg.dec_filters, cfg.dec_kernels, cfg.dec_upscales, groups=[1] * (n - 1) + [0],
                                     activation="relu")

    @classmethod
    def preset(cls, name: str, **overrides) -> "ConvDRAW":
        """``ConvDRAW.preset("cpu", draw_steps=8)``; names in :data:`PRESETS`."""
        return cls(preset(name, **overrides))

    def check_input(self, x=None, batch_size=None, who: str = "ConvDRAW") -> int:
        cfg = self.cfg
        return check_call(x, batch_size, (cfg.channels, cfg.image_size, cfg.image_size), who)

    def latent_sites(self):
        return [f"z_{l}" for l in range(1, self.cfg.draw_steps + 1)]

    def forward(self, x: Optional[torch.Tensor] = None, batch_size: Optional[int] = None, mode: bool = False):
        """Score ``x`` or, with ``x=None``, sample ``batch_size`` images (``mode=True``: each z_l at its prior mean)."""
        cfg = self.cfg
        pyro.module("convdraw", self)
        B = self.check_input(x, batch_size)
        with ModeSites(self.latent_sites()) if mode else contextlib.nullcontext():
            with pyro.plate("batch", B, dim=-1):
                state = self.draw.init_state((B,))
                for name in self.latent_sites():
                    loc, scale = self.draw.prior(state[0])
                    z = pyro.sample(name, dist.Normal(loc, scale).to_event(3))
                    state = self.draw.step(z, state)
                mean = torch.sigmoid(self.decoder(state[2]))
                pyro.sample("x", dist.Normal(mean, cfg.sigma).to_event(3), obs=x)
        return mean

    @torch.no_grad()
    def sample(self, n: int, mode: bool = False) -> torch.Tensor:
        """``n`` generations ``(n, C, H, W)``: mean images of z_1..L drawn from the prior."""
        return self(batch_size=n, mode=mode)
