"""Every model and guide refuses bad input at its entry with a ValueError that says what is wrong
(issue 10: GNM took int tensors and values above 1, NaN images reached Pyro's validation, an empty
batch gave ZeroDivisionError, the GNM guide a dtype error)."""
from __future__ import annotations

import pytest
import torch

from guides import ConvDRAWGuide, ECONGuide, GENESISGuide, GNMGuide, SPACEGuide, VAEGuide
from pyro_scenes import ECON, GENESIS, GNM, SPACE, VAE, ConvDRAW

#: the models that take images of (1, 32, 32) at their "tiny" preset, with their guides
TINY = {"SPACE": (SPACE, SPACEGuide), "VAE": (VAE, VAEGuide), "ConvDRAW": (ConvDRAW, ConvDRAWGuide),
        "GENESIS": (GENESIS, GENESISGuide)}


@pytest.fixture(scope="module")
def programs():
    """``name -> (callable, (C, H, W))`` for the models and guides of both families (tiny sizes)."""
    gnm = GNM.preset("tiny")
    econ = ECON(num_experts=2, num_layers=2, image_size=16, decoder_features=4, decoder_layers=2)
    guide = ECONGuide(econ, attention_filters=4, attention_blocks=2, encoder_features=4, encoder_layers=2)
    gnm_shape = (gnm.cfg.channels, gnm.cfg.image_size, gnm.cfg.image_size)
    return {"GNM": (gnm, gnm_shape), "GNMGuide": (GNMGuide(gnm), gnm_shape),
            "GNMGuide.infer": (GNMGuide(gnm).infer, gnm_shape),
            "ECON": (econ, (3, 16, 16)), "ECONGuide": (guide, (3, 16, 16))} | {
        name: program for model_name, (Model, Guide) in TINY.items() for model in [Model.preset("tiny")]
        for name, program in ((model_name, (model, (1, 32, 32))), (f"{model_name}Guide", (Guide(model), (1, 32, 32))))}


def bad_images(shape):
    C, H, W = shape
    nan = torch.rand(2, C, H, W)
    nan[1, 0, 3, 3] = float("nan")
    return [
        ("ints", torch.ones(2, C, H, W, dtype=torch.long), "expects float images (B x {} x {} x {}, values in [0, 1]), "
                                                           "got torch.int64"),
        ("above one", torch.full((2, C, H, W), 3.0), "expects pixel values in [0, 1], got values in [3, 3]"),
        ("negative", -torch.rand(2, C, H, W) - 0.5, "expects pixel values in [0, 1]"),
        ("nan", nan, "expects finite pixel values, got NaN or infinite ones"),
        ("inf", torch.full((2, C, H, W), float("inf")), "expects finite pixel values"),
        ("empty", torch.zeros(0, C, H, W), "expects at least one image, got an empty batch"),
        ("shape", torch.rand(2, C, H + 1, W), "expects images of shape B x {} x {} x {}, got"),
        ("not a tensor", [[0.5]], "expects float images"),
    ]


@pytest.mark.parametrize("name", ["GNM", "GNMGuide", "GNMGuide.infer", "ECON", "ECONGuide",
                                  *[n for m in TINY for n in (m, f"{m}Guide")]])
def test_bad_images_are_refused_with_the_reason(programs, name):
    program, shape = programs[name]
    for case, x, message in bad_images(shape):
        with pytest.raises(ValueError) as err:
            program(x)
        assert str(err.value).startswith(name[:3]) and message.format(*shape) in str(err.value), (case, str(err.value))


@pytest.mark.parametrize("name", ["GNM", "ECON", *TINY])
@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "2"])
def test_bad_batch_sizes_are_refused(programs, name, batch_size):
    model, _ = programs[name]
    with pytest.raises(ValueError, match=f"{name}: batch_size must be an integer >= 1, got {batch_size!r}"):
        model(batch_size=batch_size)


@pytest.mark.parametrize("name", ["GNM", "ECON", *TINY])
def test_good_input_still_runs(programs, name):
    model, shape = programs[name]
    assert model(batch_size=torch.tensor(2)).shape[-4:] == (2, *shape)  # an integer tensor is an integer
    x = torch.rand(2, *shape)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # both ends of [0, 1] are pixel values
    model(x)
