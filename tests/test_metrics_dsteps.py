import pytest
import torch

from inference.metrics.dsteps import d_steps

#: the quick protocol of these tests (the real one is DSTEPS_PROTOCOL)
QUICK = dict(num_eval=40, eval_every=5, lr=1e-3)


def close_pair(seed=2, n=140):
    """Two overlapping intensity ranges, [0, 0.6] against [0.3, 0.9]: told apart only by training
    (an untrained classifier is at chance on them, see the first evaluation below)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 0.6, 0.3 + torch.rand(n, 1, 16, 16, generator=g) * 0.6


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


def test_a_distinguishable_pair_needs_training_and_is_told_apart_both_ways():
    """The classifier learns: at chance after the first few updates, past the threshold well
    before the cap, and so with real and generated swapped too (a classifier that does not learn
    can be right by luck in one orientation, never in both)."""
    real, fake = close_pair()
    for a, b in ((real, fake), (fake, real)):
        out = d_steps(a, b, max_steps=100, **QUICK)
        assert out["history"][0][1] < 0.9, out["history"]
        assert out["reached"] and out["steps"] <= 50, out["history"]


def test_dsteps_identical_distributions_hit_the_cap():
    """Identical distributions are never told apart: the held-out accuracy stays at chance for a
    cap twice as long as the distinguishable pair above needs at most, so the cap is the verdict,
    not too short a run."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, 16, 16, generator=g)
    out = d_steps(x[:100], x[100:], max_steps=100, repeats=2, **QUICK)
    assert out["steps"] == 100 and out["reached"] is False and len(out["runs"]) == 2
    for run in out["runs"]:
        assert len(run["history"]) == 20 and all(abs(acc - 0.5) <= 0.15 for _, acc in run["history"]), run["history"]
    assert out["protocol"]["threshold"] == 0.9


def test_dsteps_rejects_bad_shapes():
    with pytest.raises(ValueError):
        d_steps(torch.zeros(10, 1, 8, 8), torch.zeros(10, 3, 8, 8), num_eval=2)
    with pytest.raises(ValueError):
        d_steps(torch.zeros(10, 1, 8, 8), torch.zeros(10, 1, 8, 8), num_eval=20)
