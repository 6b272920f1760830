"""The VAE baseline of GNM (Jiang & Ahn 2020, supplement section 4.2 and Table 8; docs/baselines.md).

One Gaussian latent per image and a sub-pixel decoder::

    z ~ N(0, I),    x ~ N(sigmoid(Decoder(z)), sigma^2 I)

The guide (:class:`guides.VAEGuide`) is GNM's image encoder (supplement Table 4) followed by a
2-layer CNN (filters [128, 2 D], kernels [3, 4]; the second one unpadded, 4x4 -> 1x1) giving
q(z | x) = N(mean, softplus(std)).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.codec import check_codec, encoded_side
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.images import check_call
from pyro_scenes.nn.subpixel import SubPixelStack
from pyro_scenes.presets import pick


@dataclass
class VAEConfig:
    """Every architectural setting of :class:`VAE` and :class:`guides.VAEGuide`.

    Defaults are the paper's MNIST scale (128x128, 1 channel): 1.46M parameters, Table 3's 1.5M
    (docs/baselines.md, "Parameter counts", for the reading of Table 8's input width).
    """

    image_size: int = 128
    channels: int = 1
    #: image encoder (guide), supplement Table 4: conv -> CELU -> GroupNorm(1), to C x 4 x 4
    enc_filters: Tuple[int, ...] = (16, 16, 32, 32, 64, 64, 128, 128, 128)
    enc_kernels: Tuple[int, ...] = (4, 3, 4, 3, 4, 3, 4, 3, 4)
    enc_strides: Tuple[int, ...] = (2, 1, 2, 1, 2, 1, 2, 1, 2)
    #: the first layer of the 2-layer CNN to the latent's parameters (the second: 4x4 unpadded, 2 D filters)
    latent_filters: int = 128
    z_dim: int = 64
    #: decoder, supplement Table 8: sub-pixel convs from z at 1x1 (ReLU + GroupNorm(1)), last to C channels
    dec_filters: Tuple[int, ...] = (128, 128, 64, 64, 32, 32, 16, 16, 16, 16, 8, 1)
    dec_kernels: Tuple[int, ...] = (1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3)
    dec_upscales: Tuple[int, ...] = (4, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
    #: pixel std of p(x | z), GNM's
    sigma: float = 0.2

    @property
    def grid(self) -> int:
        """Side of the image encoding."""
        return encoded_side(self)

    def replace(self, **overrides) -> "VAEConfig":
        return dataclasses.replace(self, **overrides)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the inconsistent setting."""
        check_codec(self, "VAE", decoder_input_side=1)


#: the paper's scale (supplement Tables 3, 4, 8): MNIST (1 channel) and Arrow (3 channels)
PAPER = VAEConfig()
PAPER_ARROW = PAPER.replace(channels=3, dec_filters=PAPER.dec_filters[:-1] + (3,))
#: 64x64 for training on a CPU: GNM's CPU encoder (pyro_scenes.gnm.config.CPU) and Table 8's
#: decoder without its last 2x block
CPU = VAEConfig(image_size=64, enc_filters=(16, 16, 32, 32, 32, 32, 32, 32, 32), enc_kernels=(4, 3, 4, 3, 4, 3, 4, 3, 3),
                enc_strides=(2, 1, 2, 1, 2, 1, 2, 1, 1), latent_filters=64,
                dec_filters=(128, 128, 64, 64, 32, 32, 16, 16, 8, 1), dec_kernels=(1, 3, 1, 3, 1, 3, 1, 3, 1, 3),
                dec_upscales=(4, 1, 2, 1, 2, 1, 2, 1, 2, 1))
CPU_ARROW = CPU.replace(channels=3, dec_filters=CPU.dec_filters[:-1] + (3,))
#: 32x32, for tests (not meant to be trained)
TINY = VAEConfig(image_size=32, enc_filters=(8, 8, 8), enc_kernels=(4, 4, 4), enc_strides=(2, 2, 2), latent_filters=8,
                 z_dim=4, dec_filters=(8, 8, 1), dec_kernels=(1, 3, 3), dec_upscales=(4, 2, 4))

PRESETS = {"paper": PAPER, "paper-arrow": PAPER_ARROW, "cpu": CPU, "arrow-cpu": CPU_ARROW, "tiny": TINY}


def preset(name: str, **overrides) -> VAEConfig:
    """A named configuration with keyword overrides, e.g. ``preset("cpu", z_dim=32)``."""
    return pick(PRESETS, name, "VAE", **overrides)


class VAE(nn.Module):
    r"""The VAE baseline: ``model(x)`` scores images ``(B, C, H, W)``; ``model(batch_size=n)``
    samples ``n``. Either call returns the mean image ``(..., B, C, H, W)``.

    ======  ====================  ============================================
    site    value shape           distribution
    ======  ====================  ============================================
    ``z``   ``(B, D)``            ``N(0, I)``
    ``x``   ``(B, C, H, W)``      ``N(sigmoid(Decoder(z)), sigma).to_event(3)``
    ======  ====================  ============================================

    Plate: ``batch`` (dim -1).
    """

    def __init__(self, config: Optional[VAEConfig] = None, **overrides):
        super().__init__()
        cfg = PAPER if config is None else config
        cfg = cfg.replace(**overrides) if overrides else cfg
        cfg.validate()
        self.cfg = cfg
        n = len(cfg.dec_filters)
        self.decoder = SubPixelStack(cfg.z_dim, cfg.dec_filters, cfg.dec_kernels, cfg.dec_upscales, groups=[1] * (n - 1) + [0],
                                     activation="relu")
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    @classmethod
    def preset(cls, name: str, **overrides) -> "VAE":
        """``VAE.preset("cpu")``; names in :data:`PRESETS`."""
        return cls(preset(name, **overrides))

    def check_input(self, x=None, batch_size=None, who: str = "VAE") -> int:
        cfg = self.cfg
        return check_call(x, batch_size, (cfg.channels, cfg.image_size, cfg.image_size), who)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., C, H, W)`` mean image."""
        return torch.sigmoid(self.decoder(z[..., None, None]))

    def forward(self, x: Optional[torch.Tensor] = None, batch_size: Optional[int] = None, mode: bool = False):
        """Score ``x`` or, with ``x=None``, sample ``batch_size`` images (``mode=True``: z at its mode, 0)."""
        cfg = self.cfg
        pyro.module("vae", self)
        B = self.check_input(x, batch_size)
        with ModeSites(["z"]) if mode else contextlib.nullcontext():
            with pyro.plate("batch", B, dim=-1):
                z = pyro.sample("z", dist.Normal(self.zero, 1.0).expand([B, cfg.z_dim]).to_event(1))
                mean = self.decode(z)
                pyro.sample("x", dist.Normal(mean, cfg.sigma).to_event(3), obs=x)
        return mean

    @torch.no_grad()
    def sample(self, n: int, mode: bool = False) -> torch.Tensor:
        """``n`` generations ``(n, C, H, W)``: mean images of z drawn from the prior."""
        return self(batch_size=n, mode=mode)
