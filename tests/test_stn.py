"""Spatial transformer (pyro_scenes.nn.stn): separable placement == grid_sample, crop, boxes."""
import pytest
import torch

from pyro_scenes.nn.stn import boxes_to_where, crop, place, place_grid_sample, place_sum, where_to_boxes


def random_where(*shape, dtype=torch.float64):
    s = torch.rand(*shape, 2, dtype=dtype) * 0.6 + 0.05
    c = torch.rand(*shape, 2, dtype=dtype) * 2.4 - 1.2  # some boxes partly outside the image
    return torch.cat([s, c], -1)


def test_place_equals_grid_sample_values_and_gradients():
    torch.manual_seed(0)
    g = torch.rand(2, 5, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    w = random_where(2, 5).requires_grad_()
    a, b = place(g, w, (20, 24)), place_grid_sample(g, w, (20, 24))
    assert a.shape == (2, 5, 3, 20, 24)
    assert torch.allclose(a, b, atol=1e-12)
    r = torch.randn_like(a)
    ga = torch.autograd.grad((a * r).sum(), [g, w])
    gb = torch.autograd.grad((b * r).sum(), [g, w])
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-9)


def test_place_sum_is_the_sum_over_cells_and_broadcasts():
    torch.manual_seed(1)
    g = torch.rand(3, 6, 1, 8, 8, dtype=torch.float64)
    w = random_where(4, 3, 6)  # an extra leading (particle) dim on where only
    out = place_sum(g, w, 16)
    assert out.shape == (4, 3, 1, 16, 16)
    ref = place_grid_sample(g.expand(4, -1, -1, -1, -1, -1), w, 16).sum(-4)
    assert torch.allclose(out, ref, atol=1e-12)


def test_place_puts_the_glimpse_in_its_box():
    # a box covering exactly pixels [8, 16) x [4, 12) of a 32x32 image receives an 8x8 glimpse 1:1
    box = torch.tensor([[8.0, 4.0, 16.0, 12.0]])
    w = boxes_to_where(box, 32)
    g = torch.arange(64.0).reshape(1, 1, 8, 8)
    out = place(g, w, 32)[0, 0]
    assert torch.allclose(out[4:12, 8:16], g[0, 0])
    out[4:12, 8:16] = 0
    assert out.abs().max() == 0


def test_crop_inverts_place_and_boxes_round_trip():
    torch.manual_seed(2)
    box = torch.tensor([[[4.0, 8.0, 20.0, 24.0], [16.0, 0.0, 32.0, 16.0]]])  # (1, K=2, 4), 16x16 boxes
    w = boxes_to_where(box, 32)
    assert torch.allclose(where_to_boxes(w, 32), box)
    g = torch.rand(1, 2, 3, 16, 16)
    img = place(g, w, 32)  # (1, 2, 3, 32, 32): one glimpse per image
    back = crop(img.reshape(2, 3, 32, 32), w.reshape(2, 1, 4), 16)  # (2, 1, 3, 16, 16)
    assert torch.allclose(back[:, 0], g[0], atol=1e-6)
