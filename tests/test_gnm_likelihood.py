"""inference.likelihood.importance_log_likelihood: exact on a conjugate model, and GNM's use of it."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from inference.likelihood import importance_log_likelihood

S = 0.5  # observation noise


def model(x):
    with pyro.plate("batch", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, S), obs=x)


def exact_guide(x):
    v = S ** 2 / (1 + S ** 2)
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(x / (1 + S ** 2), math.sqrt(v)))


def prior_guide(x):
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0))


X = torch.tensor([-1.0, 0.3, 2.0])
EXACT = dist.Normal(0.0, math.sqrt(1 + S ** 2)).log_prob(X)


def test_exact_posterior_gives_the_exact_marginal_for_any_k():
    for k, chunk in [(1, 1), (7, 3), (100, 10)]:
        ll = importance_log_likelihood(model, exact_guide, X, num_particles=k, batch_particles=chunk)
        assert ll.shape == (3,)
        assert torch.allclose(ll, EXACT, atol=1e-5)


def test_prior_proposal_converges_and_bound_is_below():
    pyro.set_rng_seed(0)
    ll = importance_log_likelihood(model, prior_guide, X, num_particles=20_000, batch_particles=5_000)
    assert torch.allclose(ll, EXACT, atol=0.05)
    # K = 1 is an ELBO sample: below log p(x) on average
    one = torch.stack([importance_log_likelihood(model, prior_guide, X, num_particles=1) for _ in range(300)]).mean(0)
    assert (one < EXACT).all()


def test_sites_outside_the_data_plate_are_rejected():
    def global_model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def global_guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="outside the 'batch' plate"):
        importance_log_likelihood(global_model, global_guide, X, num_particles=2)


@pytest.fixture
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_gnm_log_likelihood_uses_hard_z_pres(single_thread):
    from guides import GNMGuide
    from inference.recipes.gnm import GNMRecipe
    from pyro_scenes import GNM

    pyro.clear_param_store()
    model = GNM.preset("tiny")
    guide = GNMGuide(model)
    x = torch.rand(2, 1, 32, 32)
    traced = poutine.trace(guide)
    cfg = GNMRecipe().default_config("mnist4")
    ll = GNMRecipe().log_likelihood(model, traced, x, cfg, num_particles=6, batch_particles=3)
    assert ll.shape == (2,) and torch.isfinite(ll).all()
    z_pres = traced.trace.nodes["z_pres"]["value"]
    assert z_pres.shape == (3, 2, 16) and set(z_pres.unique().tolist()) <= {0.0, 1.0}
    # K = 1: the single importance weight log p(x, z) - log q(z) of one joint draw
    pyro.set_rng_seed(4)
    one = GNMRecipe().log_likelihood(model, guide, x, cfg, num_particles=1)
    pyro.set_rng_seed(4)
    from inference.handlers.temperature import RelaxationTemperature

    with RelaxationTemperature(0.0):
        with pyro.plate("_ll_particles", 1, dim=-3):
            gtr = poutine.trace(guide).get_trace(x)
            mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    ref = 0.0
    for name, site in mtr.nodes.items():
        if site["type"] == "sample" and name not in ("batch", "cells", "_ll_particles"):
            lp = site["fn"].log_prob(site["value"])
            ref = ref + lp.reshape(1, 2, -1).sum(-1)
            if name != "x":
                ref = ref - gtr.nodes[name]["fn"].log_prob(site["value"]).reshape(1, 2, -1).sum(-1)
    assert torch.allclose(one, ref[0], rtol=1e-5)


def test_gnm_log_likelihood_combines_uneven_chunks_of_particles(single_thread):
    """K = 7 particles drawn 3 + 3 + 1: the estimate is log (1/7) sum_k w_k over all seven
    weights, each recomputed here one particle at a time by conditioning model and guide on
    that particle's latents (no particle plate, no replay, float64 log-mean-exp)."""
    from guides import GNMGuide
    from inference.handlers.temperature import RelaxationTemperature
    from inference.recipes.gnm import GNMRecipe
    from pyro_scenes import GNM

    pyro.clear_param_store()
    torch.manual_seed(0)
    model = GNM.preset("tiny")
    guide = GNMGuide(model)
    x = torch.rand(2, 1, 32, 32)
    draws = []
    traced = poutine.trace(guide)

    def recording_guide(*args, **kwargs):
        out = traced(*args, **kwargs)
        draws.append(traced.trace)
        return out

    cfg = GNMRecipe().default_config("mnist4")
    ll = GNMRecipe().log_likelihood(model, recording_guide, x, cfg, num_particles=7, batch_particles=3)
    assert ll.shape == (2,)
    assert [tr.nodes["z_pres"]["value"].shape[0] for tr in draws] == [3, 3, 1]
    latents = [n for n, s in draws[0].nodes.items() if s["type"] == "sample" and n not in ("batch", "cells", "_ll_particles")]
    assert latents == ["z_g_1", "z_g_2", "z_g_3", "z_g_4", "z_pres", "z_where", "z_depth", "z_what"]

    def per_image_log_prob(trace):
        return sum(s["fn"].log_prob(s["value"]).reshape(2, -1).sum(-1).double()
                   for n, s in trace.nodes.items() if s["type"] == "sample" and n not in ("batch", "cells"))

    log_w = []
    with RelaxationTemperature(0.0), torch.no_grad():
        for tr in draws:
            for i in range(tr.nodes["z_pres"]["value"].shape[0]):
                data = {n: tr.nodes[n]["value"][i] for n in latents}
                assert set(data["z_pres"].unique().tolist()) <= {0.0, 1.0}  # hard z_pres
                p = per_image_log_prob(poutine.trace(pyro.condition(model, data=data)).get_trace(x))
                q = per_image_log_prob(poutine.trace(pyro.condition(guide, data=data)).get_trace(x))
                log_w.append(p - q)
    log_w = torch.stack(log_w)
    assert log_w.shape == (7, 2) and (log_w.max(0).values - log_w.min(0).values > 1.0).all()  # the weights differ
    expected = torch.logsumexp(log_w, 0) - math.log(7)
    assert torch.allclose(ll.double(), expected, rtol=0, atol=1e-3 + 1e-6 * expected.abs().max()), (ll, expected)
