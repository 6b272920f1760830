"""GENESIS hyper-parameters (Engelcke et al. 2019; docs/genesis.md): one dataclass and its presets.

``"paper"`` (128x128, 1 channel: MNIST-4/10) and ``"paper-arrow"`` (128x128, RGB) are the scale of
the GNM supplement's GENESIS (section 4.2; Table 3: 13.9M parameters on every dataset). They
mirror the layer sizes of the official GENESIS code at 128x128: mask latents of 64, component
latents of 16; an image encoder of five 5x5 convolutions (32, 32, 64, 64, 64 channels, strides 2,
2, 2, 1, 1) to a 16x16x64 map; the mask prior's LSTM of 256 units; a component prior MLP of two
hidden layers of 256; the component encoder's four stride-2 3x3 convolutions (32, 32, 64, 64) and
a hidden layer of 256; a spatial-broadcast decoder of 32 channels with the supplement's 3 layers
instead of 4. They are built from this repository's blocks (Conv -> CELU -> GroupNorm stacks,
sub-pixel decoders, Gaussian heads with a LayerNorm'd hidden layer) instead of the official gated
convolutions with BatchNorm, and three choices set the count:

* the official encoder ends in a *gated* 16x16 convolution to 256 features (a gate doubles its
  outputs: 64 * 16 * 16 * 512 weights, 8.39M); here the map is flattened into a linear layer to
  ``enc_features = 512`` features (16,384 * 512 weights, the same 8.39M);
* the official mask decoder starts with a gated 16x16 transposed convolution from the latent
  (64 * 128 * 16 * 16 weights, 2.10M); here a 1x1 sub-pixel layer from the latent to 16x16 x
  ``mask_filters[0] = 128`` channels (64 * 128 * 256 weights, the same 2.10M), then 5x5 layers
  (64 and 32 channels at 16x16, then three sub-pixel layers of 32 channels up to 128x128, as
  the official decoder's 5x5 layers) and a 1x1 convolution to the logits;
* with these two, the sum is 13.43M, as the official code's own (13,393,890 parameters at 128x128,
  one channel, 3 decoder layers): 0.5M short of Table 3, a difference the public code does not
  explain. The mask posterior's LSTM gets 256 units (``mask_posterior_hidden``; officially
  2 x 64 = 128), the width of the prior's LSTM, which adds 0.56M.

Model + guide: 13,989,410 parameters for "paper", 13,991,652 for "paper-arrow" (13.9M: +0.6%).

``"cpu"`` (64x64 digits) and ``"arrow-cpu"`` (64x64 RGB) are small configurations for training on
one CPU thread (324,337 and 325,155 parameters): 16/8-dimensional mask/component latents, a
mask decoder of cheap 1x1 sub-pixel layers and one 3x3 one, and a broadcast decoder working at
16x16 (``comp_downsample = 4``), upsampled bilinearly -- the masks, decoded at full resolution,
carry the shapes. ``"tiny"`` (32x32, 11,341 parameters) exists for tests.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

from pyro_scenes.presets import pick


@dataclass
class GENESISConfig:
    """Every architectural setting of :class:`~pyro_scenes.genesis.GENESIS` (and :class:`guides.GENESISGuide`).

    Defaults are the ``"cpu"`` preset (64x64, 1 channel).
    """

    # data
    image_size: int = 64
    channels: int = 1
    #: K components (stick-breaking masks; the last takes the remaining scope)
    num_components: int = 5
    z_mask_dim: int = 16
    z_comp_dim: int = 8
    #: p(z^m_k | z^m_<k): LSTM units
    mask_prior_hidden: int = 64
    #: p(z^c_k | z^m_k): hidden widths of the MLP
    comp_prior_hidden: Tuple[int, ...] = (64,)
    #: mask decoder (model): a sub-pixel stack from z^m_k at 1x1 to the image's side; the last layer
    #: has 1 channel (the mask logits); the product of the upscales is image_size
    mask_filters: Tuple[int, ...] = (32, 16, 1)
    mask_kernels: Tuple[int, ...] = (1, 1, 3)
    mask_upscales: Tuple[int, ...] = (4, 4, 4)
    #: component decoder (model): spatial broadcast of z^c_k with 2 coordinate channels at side
    #: S + 2 * comp_dec_layers (S = image_size / comp_downsample), comp_dec_layers unpadded 3x3
    #: convolutions (ELU) to side S, then a 1x1 convolution to C channels and a sigmoid; upsampled
    #: bilinearly to the image's side when comp_downsample > 1
    comp_dec_channels: int = 8
    comp_dec_layers: int = 3
    comp_downsample: int = 4
    #: image encoder of q(z^m | x) (guide): Conv -> CELU -> GroupNorm(1) stack, flattened, then a
    #: linear layer (CELU, LayerNorm) to enc_features
    enc_filters: Tuple[int, ...] = (16, 32, 32, 64)
    enc_kernels: Tuple[int, ...] = (3, 3, 3, 3)
    enc_strides: Tuple[int, ...] = (2, 2, 2, 2)
    enc_features: int = 128
    #: q(z^m_k | x, z^m_<k): LSTM units
    mask_posterior_hidden: int = 64
    #: component encoder of q(z^c_k | x, m_k) (guide): a stack on cat(x, m_k), flattened, then a
    #: Gaussian head with hidden widths comp_enc_hidden
    comp_enc_filters: Tuple[int, ...] = (16, 32, 32)
    comp_enc_kernels: Tuple[int, ...] = (4, 3, 3)
    comp_enc_strides: Tuple[int, ...] = (4, 2, 2)
    comp_enc_hidden: Tuple[int, ...] = (64,)
    #: pixel std of every component of p(x | z)
    sigma: float = 0.1

    @property
    def comp_size(self) -> int:
        """The side at which the component decoder works."""
        return self.image_size // self.comp_downsample

    def replace(self, **overrides) -> "GENESISConfig":
        return dataclasses.replace(self, **overrides)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the inconsistent setting."""
        from pyro_scenes.nn.subpixel import ConvStack

        def bad(key, why):
            raise ValueError(f"GENESIS setting {key!r}: {why}")

        if self.image_size < 1 or self.channels < 1:
            bad("image_size", "image_size and channels must be >= 1")
        if self.num_components < 1:
            bad("num_components", "must be >= 1")
        for key in ("z_mask_dim", "z_comp_dim", "mask_prior_hidden", "mask_posterior_hidden", "enc_features",
                    "comp_dec_channels", "comp_dec_layers"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        if not (len(self.mask_filters) == len(self.mask_kernels) == len(self.mask_upscales)) or not self.mask_filters:
            bad("mask_filters", "mask_filters, mask_kernels and mask_upscales must have the same (non-zero) length")
        if self.mask_filters[-1] != 1:
            bad("mask_filters", f"the last layer gives the mask logits: 1 channel, got {self.mask_filters[-1]}")
        n = 1
        for u in self.mask_upscales:
            n *= int(u)
        if n != self.image_size:
            bad("mask_upscales", f"their product ({n}) must equal image_size ({self.image_size})")
        if self.comp_downsample < 1 or self.image_size % self.comp_downsample:
            bad("comp_downsample", f"must divide image_size ({self.image_size})")
        for prefix, ins in (("enc", self.channels), ("comp_enc", self.channels + 1)):
            filters, kernels, strides = (getattr(self, f"{prefix}_{part}") for part in ("filters", "kernels", "strides"))
            if not (len(filters) == len(kernels) == len(strides)) or not filters:
                bad(f"{prefix}_filters", f"{prefix}_filters, {prefix}_kernels and {prefix}_strides must have the same "
                                         "(non-zero) length")
            if ConvStack(ins, filters, kernels, strides).output_size(self.image_size) < 1:
                bad(f"{prefix}_strides", "the encoder reduces the image to nothing")
        if self.sigma <= 0:
            bad("sigma", "the pixel std must be > 0")


#: 64x64 digits on one CPU thread (the defaults)
CPU = GENESISConfig()

ARROW_CPU = CPU.replace(channels=3)

#: the GNM supplement's GENESIS on MNIST (128x128, 1 channel; 13.9M parameters, see the module docstring)
PAPER = GENESISConfig(
    image_size=128, channels=1, num_components=5, z_mask_dim=64, z_comp_dim=16, mask_prior_hidden=256,
    comp_prior_hidden=(256, 256),
    mask_filters=(128, 64, 32, 32, 32, 32, 1), mask_kernels=(1, 5, 5, 5, 5, 5, 1), mask_upscales=(16, 1, 1, 2, 2, 2, 1),
    comp_dec_channels=32, comp_dec_layers=3, comp_downsample=1,
    enc_filters=(32, 32, 64, 64, 64), enc_kernels=(5, 5, 5, 5, 5), enc_strides=(2, 2, 2, 1, 1), enc_features=512,
    mask_posterior_hidden=256,
    comp_enc_filters=(32, 32, 64, 64), comp_enc_kernels=(3, 3, 3, 3), comp_enc_strides=(2, 2, 2, 2), comp_enc_hidden=(256,),
)

PAPER_ARROW = PAPER.replace(channels=3)

#: 32x32, for tests (not meant to be trained)
TINY = GENESISConfig(
    image_size=32, channels=1, num_components=3, z_mask_dim=3, z_comp_dim=2, mask_prior_hidden=8, comp_prior_hidden=(8,),
    mask_filters=(8, 4, 1), mask_kernels=(1, 3, 3), mask_upscales=(8, 2, 2), comp_dec_channels=4, comp_dec_layers=3,
    comp_downsample=2, enc_filters=(4, 8), enc_kernels=(3, 3), enc_strides=(2, 2), enc_features=8, mask_posterior_hidden=8,
    comp_enc_filters=(4, 8), comp_enc_kernels=(4, 3), comp_enc_strides=(4, 2), comp_enc_hidden=(8,),
)

PRESETS = {"paper": PAPER, "paper-arrow": PAPER_ARROW, "cpu": CPU, "arrow-cpu": ARROW_CPU, "tiny": TINY}


def preset(name: str, **overrides) -> GENESISConfig:
    """A named configuration with keyword overrides, e.g. ``preset("cpu", num_components=7)``."""
    return pick(PRESETS, name, "GENESIS", **overrides)
