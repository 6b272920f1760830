import pytest
import torch

from inference.metrics.dsteps import d_steps


def test_dsteps_easy_pair_is_fast_and_deterministic():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(120, 1, 16, 16, generator=g) * 0.2
    fake = 0.8 + torch.rand(120, 1, 16, 16, generator=g) * 0.2
    kw = dict(num_eval=40, eval_every=5, max_steps=400, lr=1e-3)
    a = d_steps(real, fake, **kw)
    b = d_steps(real, fake, **kw)
    assert a["reached"] and a["steps"] % 5 == 0 and a["steps"] < 400
    assert a["steps"] == b["steps"] and a["history"] == b["history"]
    assert a["accuracy"] >= 0.9


def test_dsteps_identical_distributions_hit_the_cap():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, 16, 16, generator=g)
    out = d_steps(x[:100], x[100:], num_eval=40, eval_every=10, max_steps=30, repeats=2)
    assert out["steps"] == 30 and out["reached"] is False and len(out["runs"]) == 2
    assert out["protocol"]["threshold"] == 0.9


def test_dsteps_rejects_bad_shapes():
    with pytest.raises(ValueError):
        d_steps(torch.zeros(10, 1, 8, 8), torch.zeros(10, 3, 8, 8), num_eval=2)
    with pytest.raises(ValueError):
        d_steps(torch.zeros(10, 1, 8, 8), torch.zeros(10, 1, 8, 8), num_eval=20)
