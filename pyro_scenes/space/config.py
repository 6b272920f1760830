"""SPACE hyper-parameters (Lin et al. 2020; docs/space.md): GNM's foreground networks and a
GENESIS-style background of K components.

The foreground reuses :class:`~pyro_scenes.gnm.config.GNMConfig` (image encoder, z^s network,
glimpse decoder with an alpha channel); its StructDRAW settings are unused. The background
settings are SPACE's own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Tuple

from pyro_scenes.gnm.config import ARROW_CPU, CPU, TINY, GNMConfig
from pyro_scenes.presets import pick


@dataclass
class SPACEConfig:
    """Every architectural setting of :class:`~pyro_scenes.space.SPACE` (and :class:`guides.SPACEGuide`)."""

    #: foreground: a GNM configuration with ``alpha=True`` (glimpses carry an alpha channel)
    fg: GNMConfig = field(default_factory=lambda: CPU.replace(alpha=True, glimpse_filters=(32, 32, 16, 8, 2)))
    #: K background components (stick-breaking masks)
    num_components: int = 3
    z_mask_dim: int = 8
    z_comp_dim: int = 8
    #: hidden width of the mask LSTMs (prior and posterior) and of the component prior MLP
    bg_hidden: int = 64
    #: the background is modelled at 1/bg_downsample of the image's side (decoded there, then
    #: upsampled bilinearly; the guide's background encoders read the image average-pooled to it)
    bg_downsample: int = 16
    #: sub-pixel decoders from 1x1 to the background's side, for masks (+ a 3x3 conv to 1 channel)
    #: and components (+ a 3x3 conv to C channels)
    bg_filters: Tuple[int, ...] = (32, 16)
    bg_kernels: Tuple[int, ...] = (1, 3)
    bg_upscales: Tuple[int, ...] = (2, 2)
    #: background encoder of the guide (image, or image and mask for q(z^c_k)) to a feature vector
    bg_enc_filters: Tuple[int, ...] = (32, 64)
    bg_enc_kernels: Tuple[int, ...] = (3, 3)
    bg_enc_strides: Tuple[int, ...] = (2, 2)
    #: fixed priors of z^s: z_pres ~ Bernoulli(pres_prior) (annealed by the recipe), raw z_where ~
    #: N(where_loc, where_scale) (GNM's auxiliary prior), z_depth and z_what ~ N(0, 1)
    pres_prior: float = 0.01
    where_loc: Tuple[float, ...] = (-1.6, 0.0, 0.0, 0.0)
    where_scale: Tuple[float, ...] = (0.1, 0.3, 1.0, 1.0)
    #: KLs of z_where, z_depth, z_what are weighted by z_pres clamped below at this value
    gate_min: float = 1e-5
    #: pixel std of the foreground and background components of p(x | z)
    fg_sigma: float = 0.15
    bg_sigma: float = 0.15

    @property
    def image_size(self) -> int:
        return self.fg.image_size

    @property
    def bg_size(self) -> int:
        """The side of the background's resolution."""
        return self.image_size // self.bg_downsample

    @property
    def channels(self) -> int:
        return self.fg.channels

    @property
    def num_cells(self) -> int:
        return self.fg.num_cells

    def replace(self, **overrides) -> "SPACEConfig":
        return dataclasses.replace(self, **overrides)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the inconsistent setting."""
        from pyro_scenes.nn.subpixel import ConvStack

        def bad(key, why):
            raise ValueError(f"SPACE setting {key!r}: {why}")

        self.fg.validate()
        if not self.fg.alpha or self.fg.background:
            bad("fg", "the foreground needs alpha=True and background=False (the background is SPACE's own)")
        if self.num_components < 1:
            bad("num_components", "must be >= 1")
        if self.bg_downsample < 1 or self.image_size % self.bg_downsample:
            bad("bg_downsample", f"must divide image_size ({self.image_size})")
        n = 1
        for u in self.bg_upscales:
            n *= int(u)
        if n != self.bg_size:
            bad("bg_upscales", f"their product ({n}) must equal image_size / bg_downsample ({self.bg_size})")
        if not (len(self.bg_filters) == len(self.bg_kernels) == len(self.bg_upscales)):
            bad("bg_filters", "bg_filters, bg_kernels and bg_upscales must have the same length")
        if not (len(self.bg_enc_filters) == len(self.bg_enc_kernels) == len(self.bg_enc_strides)):
            bad("bg_enc_filters", "bg_enc_filters, bg_enc_kernels and bg_enc_strides must have the same length")
        if ConvStack(1, self.bg_enc_filters, self.bg_enc_kernels, self.bg_enc_strides).output_size(self.bg_size) < 1:
            bad("bg_enc_strides", "the background encoder reduces the image to nothing")
        if len(self.where_loc) != 4 or len(self.where_scale) != 4 or min(self.where_scale) <= 0:
            bad("where_scale", "where_loc and where_scale need 4 values, scales > 0")
        if not 0 < self.pres_prior < 1:
            bad("pres_prior", "must be in (0, 1)")
        if self.fg_sigma <= 0 or self.bg_sigma <= 0:
            bad("fg_sigma", "pixel stds must be > 0")


CPU_SPACE = SPACEConfig()

ARROW_CPU_SPACE = SPACEConfig(fg=ARROW_CPU.replace(background=False), num_components=3,
                              where_loc=(-1.5, 0.0, 0.0, 0.0))

#: 32x32, for tests (not meant to be trained)
TINY_SPACE = SPACEConfig(fg=TINY.replace(alpha=True, glimpse_filters=(8, 4, 2)), num_components=2, z_mask_dim=3,
                         z_comp_dim=3, bg_hidden=8, bg_downsample=8, bg_filters=(8, 4), bg_kernels=(1, 3), bg_upscales=(2, 2),
                         bg_enc_filters=(8, 8), bg_enc_kernels=(3, 3), bg_enc_strides=(2, 2))

PRESETS = {"cpu": CPU_SPACE, "arrow-cpu": ARROW_CPU_SPACE, "tiny": TINY_SPACE}


def preset(name: str, **overrides) -> SPACEConfig:
    """A named configuration with keyword overrides, e.g. ``preset("cpu", num_components=5)``."""
    return pick(PRESETS, name, "SPACE", **overrides)
