"""GNM's VAE and ConvDRAW baselines: Pyro's tools on model and guide, the beta-ELBO recomputed by
hand from the networks and the same noise, the paper-scale parameter counts, the recipes and CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Normal, kl_divergence

from guides import ConvDRAWGuide, VAEGuide
from inference.recipes import get_recipe
from inference.training.config import TRAINER_DEFAULTS
from pyro_scenes import ConvDRAW, VAE
from pyro_scenes.convdraw import preset as convdraw_preset
from pyro_scenes.vae import preset as vae_preset

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"vae": (VAE, VAEGuide), "convdraw": (ConvDRAW, ConvDRAWGuide)}


pytestmark = pytest.mark.usefixtures("clean_pyro")


def tiny(name, **overrides):
    Model, Guide = MODELS[name]
    model = Model.preset("tiny", **overrides)
    return model, Guide(model)


def config(name, **overrides):
    recipe = get_recipe(name)
    return {**TRAINER_DEFAULTS, **recipe.default_config("mnist4"), "model": name, "dataset": "mnist4", "preset": "tiny",
            "image_size": 32, **({"z_dim": 4} if name == "vae" else {"draw_steps": 2}), **overrides}


def n_params(*modules):
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


@pytest.mark.parametrize("name,latents,shape", [("vae", ["z"], (3, 4)), ("convdraw", ["z_1", "z_2"], (3, 2, 4, 4))])
def test_sites_shapes_and_sampling(name, latents, shape):
    model, guide = tiny(name)
    x = torch.rand(3, 1, 32, 32)
    gtr = poutine.trace(guide).get_trace(x)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    names = [n for n, s in mtr.nodes.items() if s["type"] == "sample" and n != "batch"]
    assert names == latents + ["x"]
    assert [n for n, s in gtr.nodes.items() if s["type"] == "sample" and n != "batch"] == latents
    assert mtr.nodes[latents[-1]]["value"].shape == shape and mtr.nodes["x"]["fn"].batch_shape == (3,)
    assert mtr.nodes["x"]["fn"].event_shape == (1, 32, 32)
    gen = model.sample(5)
    assert gen.shape == (5, 1, 32, 32) and 0 <= gen.min() and gen.max() <= 1
    assert not torch.equal(gen[0], gen[1])  # sampled latents
    mode = model.sample(2, mode=True)
    assert torch.equal(mode[0], mode[1])  # every latent at its prior mode: one image


@pytest.mark.parametrize("name", ["vae", "convdraw"])
def test_condition_do_predictive_and_svi(name):
    model, guide = tiny(name)
    first = "z" if name == "vae" else "z_1"
    x = torch.rand(2, 1, 32, 32)
    value = poutine.trace(model).get_trace(batch_size=2).nodes[first]["value"].detach()
    tr = poutine.trace(pyro.condition(model, data={first: value})).get_trace(batch_size=2)
    assert tr.nodes[first]["is_observed"] and torch.equal(tr.nodes[first]["value"], value)
    fixed = {n: s["value"].detach() for n, s in poutine.trace(model).get_trace(batch_size=2).nodes.items() if n.startswith("z")}
    a, b = (poutine.trace(poutine.do(model, data=fixed)).get_trace(batch_size=2) for _ in range(2))
    assert not a.nodes[first]["is_observed"]
    assert torch.equal(a.nodes["x"]["fn"].mean, b.nodes["x"]["fn"].mean)  # every latent intervened on: one image
    if name == "vae":
        assert torch.allclose(a.nodes["x"]["fn"].mean, model.decode(fixed["z"]))
    for parallel in (False, True):
        out = Predictive(model, guide=guide, num_samples=3, parallel=parallel)(x)
        assert out[first].shape[:2] == (3, 2) and out["x"].shape[-3:] == (1, 32, 32)
    for elbo in (Trace_ELBO(max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)):
        pyro.clear_param_store()
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), elbo)
        losses = [svi.step(x) for _ in range(25)]
        assert losses[-1] < losses[0]


def test_bad_input_is_refused():
    model, guide = tiny("vae")
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="batch_size"):
        model(batch_size=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        guide(torch.full((1, 1, 32, 32), 2.0))
    with pytest.raises(ValueError, match="dec_upscales"):
        vae_preset("tiny", dec_upscales=(4, 2, 2))
    with pytest.raises(ValueError, match="draw_steps"):
        convdraw_preset("tiny", draw_steps=0)
    with pytest.raises(TypeError, match="ConvDRAW model"):
        ConvDRAWGuide(VAE.preset("tiny"))


def vae_loss_by_hand(model, guide, x, z, beta):
    """-log N(x; sigmoid(Dec(z)), sigma) + beta KL(N(mu, sd) || N(0, 1)), batch mean, from the layers."""
    h = guide.encoder(x)
    out = guide.latent[1](guide.latent[0](h)).flatten(1)
    mu, sd = out[:, :4], F.softplus(out[:, 4:])
    mean = torch.sigmoid(model.decoder(z[:, :, None, None]))
    nll = -Normal(mean, model.cfg.sigma).log_prob(x).sum((1, 2, 3))
    kl = kl_divergence(Normal(mu, sd), Normal(torch.zeros(4), torch.ones(4))).sum(-1)
    return (nll + beta * kl).mean()


def lstm(cell, inp, h, c):
    """One ConvLSTM step written out: gates i, f, o, g from a conv of cat[input, h]."""
    gates = F.conv2d(torch.cat([inp, h], 1), cell.conv.weight, cell.conv.bias, padding=cell.conv.padding)
    i, f, o, g = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gaussian(head, h):
    mu, sd = head.net(h).chunk(2, 1)
    return Normal(mu, F.softplus(sd))


def convdraw_loss_by_hand(model, guide, x, zs, beta):
    """ConvDRAW's beta-ELBO (docs/baselines.md) step by step from the layers, with the sampled z_l."""
    B = x.shape[0]
    core = model.draw
    hd, cd = core.lstm.h_0.expand(B, -1, -1, -1), core.lstm.c_0.expand(B, -1, -1, -1)
    he, ce = guide.lstm.h_0.expand(B, -1, -1, -1), guide.lstm.c_0.expand(B, -1, -1, -1)
    f = torch.zeros_like(hd)
    fx = guide.encoder(x)
    kl = 0.0
    for z in zs:
        he, ce = lstm(guide.lstm, torch.cat([hd, fx, fx - f], 1), he, ce)
        kl = kl + kl_divergence(gaussian(guide.posterior_net, he), gaussian(core.prior_net, hd)).sum((1, 2, 3))
        hd, cd = lstm(core.lstm, z, hd, cd)
        f = f + F.conv2d(hd, core.out_cnn.net[0].weight, core.out_cnn.net[0].bias, padding=1)
    nll = -Normal(torch.sigmoid(model.decoder(f)), model.cfg.sigma).log_prob(x).sum((1, 2, 3))
    return (nll + beta * kl).mean()


@pytest.mark.parametrize("name,beta", [("vae", 1.0), ("vae", 10.0), ("convdraw", 1.0), ("convdraw", 10.0)])
def test_the_loss_is_the_beta_elbo_recomputed_by_hand(name, beta):
    recipe = get_recipe(name)
    cfg = config(name, beta=beta)
    model, guide = recipe.build(cfg, torch.device("cpu"))
    x = torch.rand(3, 1, 32, 32)
    torch.manual_seed(5)
    loss, logs = recipe.loss(model, guide, x, 0, cfg)
    torch.manual_seed(5)  # the same noise: the guide's draws again
    gtr = poutine.trace(guide).get_trace(x)
    with torch.no_grad():
        if name == "vae":
            want = vae_loss_by_hand(model, guide, x, gtr.nodes["z"]["value"], beta)
        else:
            want = convdraw_loss_by_hand(model, guide, x, [gtr.nodes[n]["value"] for n in model.latent_sites()], beta)
    assert torch.allclose(loss, want, rtol=1e-5), (float(loss), float(want))
    assert logs["nll"] + beta * logs["kl"] == pytest.approx(float(loss.detach()), rel=1e-5)


@pytest.mark.parametrize("Model,Guide,name,paper,count,tolerance", [
    (VAE, VAEGuide, "paper", 1.5e6, 1_419_929, 0.06),
    (VAE, VAEGuide, "paper-arrow", 1.5e6, 1_420_587, 0.06),
    (ConvDRAW, ConvDRAWGuide, "paper", 1.5e6, 1_577_753, 0.06),
    (ConvDRAW, ConvDRAWGuide, "paper-arrow", 4.7e6, 4_573_739, 0.03),
])
def test_paper_presets_have_the_supplements_parameter_counts(Model, Guide, name, paper, count, tolerance):
    """Supplement Table 3 (rounded to 0.1M); docs/baselines.md says how each count comes about."""
    model = Model.preset(name)
    n = n_params(model, Guide(model))
    assert n == count and abs(n - paper) / paper < tolerance


def test_draw_steps_do_not_change_the_parameters():
    a, b = ConvDRAW.preset("cpu"), ConvDRAW.preset("cpu", draw_steps=8)
    assert n_params(a, ConvDRAWGuide(a)) == n_params(b, ConvDRAWGuide(b))


def test_recipes_validate_their_settings():
    for name in ("vae", "convdraw"):
        recipe = get_recipe(name)
        recipe.validate_config(config(name))
        with pytest.raises(ValueError, match="image_size"):
            recipe.validate_config(config(name, image_size=64))
        with pytest.raises(ValueError, match="channel"):
            recipe.validate_config(config(name, dataset="arrow"))
        with pytest.raises(ValueError, match="beta"):
            recipe.validate_config(config(name, beta=0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vae", "convdraw"])
def test_cli_trains_evaluates_and_draws(tmp_path, name):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "inference.svi", "--model", name, "--dataset", "mnist4", "--steps", "2", "--batch-size", "2",
           "--out", str(out), "--num-train", "8", "--set", "num_val=4", "--set", "cache_dir=", "--set", "beta=10",
           "--val-every", "2", "--log-every", "1"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2] and lines[0]["logs"]["beta"] == 10
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [f"{name}_generations.png", f"{name}_reconstructions.png"]
    res = subprocess.run([sys.executable, "-m", "inference.evaluate", str(out), "-n", "4", "-m", "ll,d-steps", "--particles", "2",
                          "--no-plots"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    report = json.loads(next(out.glob("**/metrics_test.json")).read_text())
    assert {"ll", "d-steps"} <= set(report["results"]) and report["results"]["ll"] < 0


def test_the_kl_warm_up_ramps_beta_from_zero():
    recipe = get_recipe("vae")
    cfg = config("vae", beta=10.0, beta_warmup=100)
    model, guide = recipe.build(cfg, torch.device("cpu"))
    x = torch.rand(3, 1, 32, 32)
    for step, beta in ((0, 0.0), (50, 5.0), (100, 10.0), (1000, 10.0)):
        torch.manual_seed(5)
        loss, logs = recipe.loss(model, guide, x, step, cfg)
        torch.manual_seed(5)
        z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
        with torch.no_grad():
            want = vae_loss_by_hand(model, guide, x, z, beta)
        assert logs["beta"] == pytest.approx(beta) and torch.allclose(loss, want, rtol=1e-5), step
    with pytest.raises(ValueError, match="beta_warmup"):
        recipe.validate_config(config("vae", beta_warmup=-1))
