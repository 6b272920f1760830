"""The GNM training handlers, each on its own: beta annealing (ScaleSites on model AND guide),
auxiliary KLs, z_pres temperature, fixed-mask curriculum."""
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from guides import GNMGuide
from inference.handlers.aux_kl import AuxiliaryKL, AuxTerm
from inference.handlers.curriculum import FixedMaskCurriculum
from inference.handlers.scale import ScaleSites
from inference.handlers.temperature import RelaxationTemperature
from inference.schedules import Linear
from pyro_scenes import GNM
from pyro_scenes.gnm import ConcreteBernoulli, RenderOptions, render_options


@pytest.fixture(autouse=True)
def _fresh():
    pyro.clear_param_store()
    torch.manual_seed(0)


# ---------------------------------------------------------------- a toy pair with the GNM layout
def toy_model(x):
    with pyro.plate("batch", x.shape[0], dim=-2):
        g = pyro.sample("z_g_1", dist.Normal(torch.zeros(1, 2), 1.0).to_event(1))
        with pyro.plate("cells", 3, dim=-1):
            pres = pyro.sample("z_pres", ConcreteBernoulli(torch.zeros(x.shape[0], 3) + g[..., 0], 0.5))
            where = pyro.sample("z_where", dist.Normal(torch.zeros(3, 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal((pres[..., None] * where).sum(-2, keepdim=True), 1.0).to_event(1), obs=x[:, None])


Q = {}


def toy_guide(x):
    loc = pyro.param("loc", torch.tensor([0.3, -0.2]))
    logit = pyro.param("logit", torch.tensor([1.0, -1.0, 0.5]))
    wloc = pyro.param("wloc", torch.tensor([[0.1, 0.2], [-0.3, 0.0], [0.5, 0.5]]))
    with pyro.plate("batch", x.shape[0], dim=-2):
        pyro.sample("z_g_1", dist.Normal(loc, 0.5).to_event(1))
        with pyro.plate("cells", 3, dim=-1):
            Q["pres"] = pyro.sample("z_pres", ConcreteBernoulli(logit.expand(x.shape[0], 3), 0.5))
            pyro.sample("z_where", dist.Normal(wloc, 0.7).to_event(1))


X = torch.randn(4, 2)


def mf_loss(model, guide, seed=0):
    pyro.set_rng_seed(seed)
    return TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model, guide, X)


# ---------------------------------------------------------------- beta annealing
def test_scale_sites_weights_the_zg_kl_in_model_and_guide():
    beta = ScaleSites({"z_g_*": Linear(0.0, 1.0, 0, 100)}, step=25)
    base = mf_loss(toy_model, toy_guide)
    scaled = mf_loss(beta(toy_model), beta(toy_guide))
    kl = kl_divergence(dist.Normal(torch.tensor([0.3, -0.2]), 0.5).to_event(1), dist.Normal(torch.zeros(2), 1.0).to_event(1)) * X.shape[0]
    assert torch.allclose(base - scaled, (1 - 0.25) * kl, rtol=1e-5)
    # with the sampled (Trace_ELBO) estimator too: log p and log q are both scaled
    pyro.set_rng_seed(3)
    a = Trace_ELBO().differentiable_loss(beta(toy_model), beta(toy_guide), X)
    pyro.set_rng_seed(3)
    tr = poutine.trace(toy_guide).get_trace(X)
    mtr = poutine.trace(poutine.replay(toy_model, trace=tr)).get_trace(X)
    ref = 0.0
    for name in ["z_g_1", "z_pres", "z_where", "x"]:
        w = 0.25 if name == "z_g_1" else 1.0
        lp = mtr.nodes[name]["fn"].log_prob(mtr.nodes[name]["value"]).sum()
        lq = tr.nodes[name]["fn"].log_prob(tr.nodes[name]["value"]).sum() if name != "x" else 0.0
        ref = ref - w * (lp - lq)
    assert torch.allclose(a, ref, rtol=1e-5)


def test_gnm_beta_g_scales_every_zg_step():
    model = GNM.preset("tiny")
    guide = GNMGuide(model)
    x = torch.rand(2, 1, 32, 32)
    beta = ScaleSites({"z_g_*": 0.3})
    gtr = poutine.trace(beta(guide)).get_trace(x)
    mtr = poutine.trace(poutine.replay(beta(model), trace=gtr)).get_trace(x)
    for l in range(1, 5):
        assert gtr.nodes[f"z_g_{l}"]["scale"] == 0.3 and mtr.nodes[f"z_g_{l}"]["scale"] == 0.3
    assert gtr.nodes["z_what"]["scale"] == 1.0 and mtr.nodes["x"]["scale"] == 1.0


# ---------------------------------------------------------------- auxiliary KLs
def test_aux_kl_adds_weighted_gated_kls_to_the_loss():
    rho = Linear(0.1, 0.001, 0, 4000)
    prior_where = dist.Normal(torch.tensor([-1.0, 0.0]), torch.tensor([0.1, 0.3])).to_event(1)
    terms = {
        "z_pres": AuxTerm(prior=lambda step: dist.Bernoulli(probs=torch.tensor(rho(step)))),
        "z_where": AuxTerm(prior=prior_where, weight=Linear(10.0, 1.0, 0, 500), gate="z_pres", gate_min=1e-5),
    }
    step = 200
    aux = AuxiliaryKL(terms, step=step)
    base = mf_loss(toy_model, toy_guide, seed=5)
    pres_base = Q["pres"].detach().clone()
    with_aux = mf_loss(toy_model, aux(toy_guide), seed=5)
    assert torch.equal(Q["pres"].detach(), pres_base)  # same noise
    logit = torch.tensor([1.0, -1.0, 0.5]).expand(4, 3)
    kl_pres = kl_divergence(torch.distributions.Bernoulli(logits=logit), torch.distributions.Bernoulli(probs=torch.tensor(rho(step))))
    q_where = dist.Normal(torch.tensor([[0.1, 0.2], [-0.3, 0.0], [0.5, 0.5]]), 0.7).to_event(1)
    kl_where = kl_divergence(q_where, prior_where) * pres_base.clamp(min=1e-5) * Linear(10.0, 1.0, 0, 500)(step)
    assert torch.allclose(with_aux - base, kl_pres.sum() + kl_where.sum(), rtol=1e-5)
    assert aux.values["z_pres"] == pytest.approx(float(kl_pres.sum()), rel=1e-5)
    # the factor sites are in the guide trace, at the site's plates
    pyro.set_rng_seed(5)
    tr = poutine.trace(aux(toy_guide)).get_trace(X)
    site = tr.nodes["aux_kl_z_where"]
    assert site["infer"]["is_auxiliary"] and site["fn"].has_rsample
    assert {f.name for f in site["cond_indep_stack"]} == {"batch", "cells"}


def test_aux_kl_gradient_flows_through_the_relaxed_gate():
    terms = {"z_where": AuxTerm(prior=dist.Normal(torch.zeros(2), 1.0).to_event(1), gate="z_pres")}
    pyro.set_rng_seed(1)
    with AuxiliaryKL(terms):
        tr = poutine.trace(toy_guide).get_trace(X)
    kl = tr.nodes["aux_kl_z_where"]["fn"].log_factor.sum()
    (g,) = torch.autograd.grad(kl, [pyro.param("logit").unconstrained()])
    assert g.abs().sum() > 0  # the presence logits get a gradient through the gate
    with pytest.raises(RuntimeError, match="gate site"):
        with AuxiliaryKL({"z_where": AuxTerm(prior=dist.Normal(torch.zeros(2), 1.0).to_event(1), gate="z_missing")}):
            toy_guide(X)


def test_aux_kl_passes_validation_without_warnings():
    pyro.enable_validation(True)
    try:
        aux = AuxiliaryKL({"z_pres": AuxTerm(prior=dist.Bernoulli(probs=torch.tensor(0.1)))})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss = mf_loss(toy_model, aux(toy_guide))
        assert torch.isfinite(loss)
    finally:
        pyro.enable_validation(False)


# ---------------------------------------------------------------- temperature
def test_relaxation_temperature_schedule():
    tau = RelaxationTemperature(Linear(1.0, 0.5, 1000, 20000), step=10_500)
    assert tau.temperature == pytest.approx(0.75)
    tr = poutine.trace(tau(toy_guide)).get_trace(X)
    assert tr.nodes["z_pres"]["fn"].temperature == pytest.approx(0.75)
    assert isinstance(tr.nodes["z_where"]["fn"], dist.Independent)  # other sites untouched
    with RelaxationTemperature(0.0):
        tr = poutine.trace(toy_guide).get_trace(X)
    assert set(tr.nodes["z_pres"]["value"].unique().tolist()) <= {0.0, 1.0}
    # the GNM default without a handler is the configured temperature
    model = GNM.preset("tiny")
    tr = poutine.trace(model).get_trace(batch_size=1, mode=False)
    assert tr.nodes["z_pres"]["fn"].temperature == model.cfg.pres_temperature
    with RelaxationTemperature(0.9):
        tr = poutine.trace(model).get_trace(batch_size=1, mode=False)
    assert tr.nodes["z_pres"]["fn"].temperature == 0.9


# ---------------------------------------------------------------- curriculum
def test_fixed_mask_curriculum_window():
    assert render_options(RenderOptions()) == RenderOptions()  # no handler: unchanged
    for step, active in [(0, True), (499, True), (500, False), (10_000, False)]:
        with FixedMaskCurriculum(step=step, end=500):
            opts = render_options(RenderOptions(), name="render")
        assert (opts == RenderOptions(alpha=0.9, pres_max=0.99)) == active, step
        assert (opts == RenderOptions()) == (not active)


def test_fixed_mask_curriculum_changes_only_the_rendering():
    model = GNM.preset("arrow-tiny")
    guide = GNMGuide(model)
    x = torch.rand(2, 3, 32, 32)
    gtr = poutine.trace(guide).get_trace(x)
    v = {n: gtr.nodes[n]["value"] for n in ["z_pres", "z_where", "z_depth", "z_what", "z_bg"]}
    with FixedMaskCurriculum(step=10):
        tr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    image = tr.nodes["_RETURN"]["value"]
    ref, fg, alpha, bg = model.render(v["z_pres"], v["z_where"], v["z_depth"], v["z_what"], v["z_bg"], RenderOptions(alpha=0.9, pres_max=0.99))
    assert torch.allclose(image, ref) and torch.allclose(image, fg + 0.1 * bg)
    plain = poutine.replay(model, trace=gtr)(x)
    assert not torch.allclose(plain, image)
    # the distributions of the latent sites are unchanged
    tr2 = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    assert torch.equal(tr.nodes["z_what"]["fn"].mean, tr2.nodes["z_what"]["fn"].mean)
