"""GNM hyper-parameters: one dataclass, presets for the datasets.

The ``"mnist"`` and ``"arrow"`` presets reproduce the configurations the GNM authors trained with
(their public code; docs/gnm.md, "Presets"): 2,930,708 and 8,636,446 parameters (model + guide).
``"cpu"`` is a small 64x64 configuration for training on this machine, ``"arrow-cpu"`` its RGB
counterpart with a background; ``"tiny"``/``"arrow-tiny"`` (32x32) exist for tests.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Tuple

from pyro_scenes.presets import pick


@dataclass
class GNMConfig:
    """Every architectural setting of :class:`~pyro_scenes.gnm.GNM` (and :class:`guides.GNMGuide`).

    Defaults are the authors' MNIST configuration (128x128, 1 channel, no background).
    """

    # data
    image_size: int = 128
    channels: int = 1
    # image encoder (guide): conv -> CELU -> GroupNorm(1), output C x G x G
    enc_filters: Tuple[int, ...] = (16, 16, 32, 32, 64, 64, 64, 64, 64)
    enc_kernels: Tuple[int, ...] = (4, 3, 4, 3, 4, 3, 4, 3, 4)
    enc_strides: Tuple[int, ...] = (2, 1, 2, 1, 2, 1, 2, 1, 2)
    grid: int = 4
    # StructDRAW
    draw_steps: int = 4
    z_g_dim: int = 32
    draw_mlp: Tuple[int, ...] = (512, 512)  # interaction MLPs (prior and posterior of z^g_l), hidden widths
    g_dec_mlp: Tuple[int, ...] = (512, 512)  # z^g_l decoder hidden widths; output G*G*C
    lstm_kernel: int = 1
    out_kernel: int = 3
    # symbolic map z^s
    zs_filters: Tuple[int, ...] = (64, 64)  # 1x1 convs of the shared z^s network
    z_what_dim: int = 20
    z_depth_dim: int = 1
    pres_logit_scale: float = 8.8
    where_scale_bias: float = -1.0
    where_init_range: float = 0.01
    # glimpse decoder (sub-pixel stack from z_what at 1x1)
    glimpse_filters: Tuple[int, ...] = (64, 64, 32, 16, 8, 1)
    glimpse_kernels: Tuple[int, ...] = (1, 1, 1, 1, 3, 3)
    glimpse_upscales: Tuple[int, ...] = (4, 2, 2, 2, 1, 1)
    alpha: bool = False  # glimpses carry an alpha channel (Arrow: depth/alpha compositing)
    # background
    background: bool = False
    z_bg_dim: int = 10
    bg_filters: Tuple[int, ...] = (128, 64, 32, 16, 8, 3)
    bg_kernels: Tuple[int, ...] = (1, 1, 1, 1, 1, 3)
    bg_upscales: Tuple[int, ...] = (4, 2, 4, 2, 2, 1)
    p_bg_mlp: Tuple[int, ...] = (128, 64)
    q_bg_mlp: Tuple[int, ...] = (512, 256)
    # likelihood and rendering
    sigma: float = 0.2
    eps: float = 1e-15
    pres_temperature: float = 0.5  # Concrete temperature used when no handler sets one (0: hard Bernoulli)

    @property
    def hidden(self) -> int:
        """C: channels of the image encoding f^x and of the structure map f."""
        return int(self.enc_filters[-1])

    @property
    def num_cells(self) -> int:
        return self.grid * self.grid

    @property
    def glimpse_size(self) -> int:
        n = 1
        for u in self.glimpse_upscales:
            n *= int(u)
        return n

    @property
    def glimpse_channels(self) -> int:
        return self.channels + (1 if self.alpha else 0)

    def replace(self, **overrides) -> "GNMConfig":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "GNMConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GNM setting(s): {', '.join(sorted(unknown))}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the inconsistent setting."""
        from pyro_scenes.nn.subpixel import ConvStack

        def bad(key, why):
            raise ValueError(f"GNM setting {key!r}: {why}")

        if self.channels not in (1, 3):
            bad("channels", f"must be 1 or 3, got {self.channels}")
        if not (len(self.enc_filters) == len(self.enc_kernels) == len(self.enc_strides)):
            bad("enc_filters", "enc_filters, enc_kernels and enc_strides must have the same length")
        out = ConvStack(self.channels, self.enc_filters, self.enc_kernels, self.enc_strides).output_size(self.image_size)
        if out != self.grid:
            bad("enc_strides", f"the encoder maps {self.image_size}x{self.image_size} to {out}x{out}, not the {self.grid}x{self.grid} grid")
        if self.draw_steps < 1:
            bad("draw_steps", "must be >= 1")
        if self.glimpse_filters[-1] != self.glimpse_channels:
            bad("glimpse_filters", f"last width must be {self.glimpse_channels} (channels{' + alpha' if self.alpha else ''})")
        if self.background:
            n = 1
            for u in self.bg_upscales:
                n *= int(u)
            if n != self.image_size:
                bad("bg_upscales", f"their product ({n}) must equal image_size ({self.image_size})")
            if self.bg_filters[-1] != self.channels:
                bad("bg_filters", f"last width must be {self.channels}")
        if self.sigma <= 0:
            bad("sigma", "must be > 0")


MNIST = GNMConfig()

ARROW = GNMConfig(
    channels=3,
    enc_filters=(16, 16, 32, 32, 64, 64, 128, 128, 128),
    g_dec_mlp=(512, 1024),
    zs_filters=(128, 128),
    z_what_dim=64,
    glimpse_filters=(128, 64, 32, 16, 8, 4),
    glimpse_kernels=(3, 3, 3, 3, 3, 3),
    glimpse_upscales=(2, 2, 2, 2, 2, 2),
    alpha=True,
    background=True,
)

CPU = GNMConfig(
    image_size=64,
    enc_filters=(16, 16, 32, 32, 32, 32, 32, 32, 32),
    enc_kernels=(4, 3, 4, 3, 4, 3, 4, 3, 3),
    enc_strides=(2, 1, 2, 1, 2, 1, 2, 1, 1),
    draw_mlp=(256, 256),
    g_dec_mlp=(256, 256),
    zs_filters=(32, 32),
    glimpse_filters=(32, 32, 16, 8, 1),
    glimpse_kernels=(1, 1, 1, 3, 3),
    glimpse_upscales=(4, 2, 2, 1, 1),
)

ARROW_CPU = CPU.replace(
    channels=3,
    z_what_dim=32,
    glimpse_filters=(64, 32, 16, 8, 4),
    glimpse_kernels=(3, 3, 3, 3, 3),
    glimpse_upscales=(2, 2, 2, 2, 2),
    alpha=True,
    background=True,
    bg_filters=(64, 32, 16, 8, 3),
    bg_kernels=(1, 1, 1, 1, 3),
    bg_upscales=(4, 2, 4, 2, 1),
    p_bg_mlp=(128, 64),
    q_bg_mlp=(256, 128),
)

#: minimal 32x32 configurations for tests and doc examples (not meant to be trained)
TINY = GNMConfig(
    image_size=32,
    enc_filters=(8, 8, 8, 8, 8),
    enc_kernels=(4, 3, 4, 3, 4),
    enc_strides=(2, 1, 2, 1, 2),
    draw_mlp=(32,),
    g_dec_mlp=(32,),
    zs_filters=(8, 8),
    z_what_dim=4,
    glimpse_filters=(8, 4, 1),
    glimpse_kernels=(1, 1, 3),
    glimpse_upscales=(4, 2, 1),
)

ARROW_TINY = TINY.replace(
    channels=3,
    z_what_dim=6,
    glimpse_filters=(8, 4, 4),
    alpha=True,
    background=True,
    bg_filters=(8, 4, 3),
    bg_kernels=(1, 1, 3),
    bg_upscales=(4, 2, 4),
    p_bg_mlp=(16,),
    q_bg_mlp=(16,),
)

PRESETS = {
    "mnist": MNIST,
    "mnist4": MNIST,
    "mnist10": MNIST,
    "mnist4-10": MNIST,
    "arrow": ARROW,
    "cpu": CPU,
    "arrow-cpu": ARROW_CPU,
    "tiny": TINY,
    "arrow-tiny": ARROW_TINY,
}


def preset(name: str, **overrides) -> GNMConfig:
    """A named configuration with keyword overrides, e.g. ``preset("mnist", draw_steps=8)`` (GNM-8)."""
    return pick(PRESETS, name, "GNM", **overrides)
