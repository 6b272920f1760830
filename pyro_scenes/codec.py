"""What the VAE and ConvDRAW configurations share: GNM's image encoder (supplement Table 4) and a
sub-pixel image decoder (Tables 8 and 9), with their consistency checks."""
from __future__ import annotations

import math

from pyro_scenes.nn.subpixel import ConvStack


def encoded_side(cfg) -> int:
    """The side of ``cfg``'s image encoding (``enc_filters``/``enc_kernels``/``enc_strides`` on
    ``image_size`` images)."""
    return ConvStack(cfg.channels, cfg.enc_filters, cfg.enc_kernels, cfg.enc_strides).output_size(cfg.image_size)


def check_codec(cfg, model: str, decoder_input_side: int) -> None:
    """Raise ``ValueError`` naming ``model`` and the setting unless the encoder reduces the image to
    a side >= 1 and the decoder (``dec_filters``/``dec_kernels``/``dec_upscales``) takes
    ``decoder_input_side`` to ``image_size`` with ``channels`` outputs; ``sigma`` must be > 0."""
    def bad(key, why):
        raise ValueError(f"{model} setting {key!r}: {why}")

    if cfg.channels not in (1, 3):
        bad("channels", f"must be 1 or 3, got {cfg.channels}")
    if not (len(cfg.enc_filters) == len(cfg.enc_kernels) == len(cfg.enc_strides)):
        bad("enc_filters", "enc_filters, enc_kernels and enc_strides must have the same length")
    if encoded_side(cfg) < 1:
        bad("enc_strides", f"the encoder reduces {cfg.image_size}x{cfg.image_size} images to nothing")
    if not (len(cfg.dec_filters) == len(cfg.dec_kernels) == len(cfg.dec_upscales)):
        bad("dec_filters", "dec_filters, dec_kernels and dec_upscales must have the same length")
    n = math.prod(int(u) for u in cfg.dec_upscales)
    if n * decoder_input_side != cfg.image_size:
        bad("dec_upscales", f"their product ({n}) times the decoder's input side ({decoder_input_side}) must equal "
                            f"image_size ({cfg.image_size})")
    if cfg.dec_filters[-1] != cfg.channels:
        bad("dec_filters", f"last width must be {cfg.channels} (the channels)")
    if cfg.sigma <= 0:
        bad("sigma", "must be > 0")
