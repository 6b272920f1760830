"""GENESIS: sites and shapes, Pyro's tools on model and guide, the beta-ELBO recomputed by hand from
the networks and the guide's draws, the paper-scale parameter counts, the LR schedule, the recipe and CLI."""
import json
import math
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

from guides import GENESISGuide
from inference.recipes import get_recipe
from inference.recipes.genesis import GENESISRecipe
from inference.training.config import TRAINER_DEFAULTS
from pyro_scenes import GENESIS
from pyro_scenes.genesis import preset
from pyro_scenes.genesis.networks import BroadcastDecoder

ROOT = Path(__file__).resolve().parents[1]
LATENTS = ["z_mask_1", "z_comp_1", "z_mask_2", "z_comp_2", "z_mask_3", "z_comp_3"]


pytestmark = pytest.mark.usefixtures("clean_pyro")


def tiny():
    model = GENESIS.preset("tiny")
    return model, GENESISGuide(model)


def config(dataset="mnist4", **overrides):
    return {**TRAINER_DEFAULTS, **GENESISRecipe().default_config(dataset), "model": "genesis", "dataset": dataset,
            "preset": "tiny", "image_size": 32, "num_components": 3, **overrides}


def n_params(*modules):
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


def test_sites_shapes_and_program_order():
    model, guide = tiny()
    x = torch.rand(3, 1, 32, 32)
    gtr = poutine.trace(guide).get_trace(x)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    names = [n for n, s in mtr.nodes.items() if s["type"] == "sample" and n != "batch"]
    assert names == LATENTS + ["x"] == model.latent_sites() + ["x"]
    assert [n for n, s in gtr.nodes.items() if s["type"] == "sample" and n != "batch"] == LATENTS
    for name in LATENTS:  # one plate: batch at dim -1, a vector per image
        dim = 3 if name.startswith("z_mask") else 2
        assert mtr.nodes[name]["value"].shape == (3, dim) and mtr.nodes[name]["fn"].batch_shape == (3,)
        assert [f.dim for f in mtr.nodes[name]["cond_indep_stack"]] == [-1]
    likelihood = mtr.nodes["x"]["fn"]
    assert likelihood.batch_shape == (3,) and likelihood.event_shape == (1, 32, 32) and mtr.nodes["x"]["is_observed"]
    assert likelihood.weights.shape == (3, 3, 1, 32, 32) and torch.allclose(likelihood.weights.sum(-4), torch.ones(()), atol=1e-5)
    assert torch.allclose(likelihood.scales, torch.full((3,), 0.1))
    out = poutine.replay(model, trace=gtr)(x)
    assert out.shape == (3, 1, 32, 32) and torch.allclose(out, likelihood.mean)
    masks = guide(x)
    assert masks.shape == (3, 3, 1, 32, 32) and torch.allclose(masks.sum(1), torch.ones(()), atol=1e-5)
    found = guide.infer(x)  # posterior means, no sampling
    assert found["z_mask"].shape == (3, 3, 3) and found["z_comp"].shape == (3, 3, 2)
    assert found["masks"].shape == (3, 3, 1, 32, 32) and found["components"].shape == (3, 3, 1, 32, 32)
    assert torch.allclose(found["masks"].sum(1), torch.ones(()), atol=1e-5)
    assert torch.equal(found["reconstruction"], guide.infer(x)["reconstruction"])
    assert GENESIS().cfg == preset("cpu") and GENESIS(num_components=2).latent_sites() == LATENTS[:4]


def test_sampling_from_the_prior():
    model, _ = tiny()
    assert model(batch_size=2).shape == (2, 1, 32, 32)
    gen = model.sample(5)
    assert gen.shape == (5, 1, 32, 32) and 0 <= gen.min() and gen.max() <= 1 and not gen.requires_grad
    assert not torch.equal(gen[0], gen[1])  # sampled latents
    mode = model.sample(2, mode=True)
    assert torch.equal(mode[0], mode[1])  # every latent at its prior mode: one image
    tr = poutine.trace(model).get_trace(batch_size=4)
    assert not tr.nodes["x"]["is_observed"] and tr.nodes["x"]["value"].shape == (4, 1, 32, 32)


def test_bad_input_is_refused():
    model, guide = tiny()
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        guide(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(torch.full((1, 1, 32, 32), 2.0))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        model(batch_size=0)
    with pytest.raises(ValueError, match="batch_size=3"):
        model(torch.rand(2, 1, 32, 32), batch_size=3)
    with pytest.raises(ValueError, match="batch_size=n"):
        model()
    with pytest.raises(ValueError, match="needs the images"):
        guide(None)
    with pytest.raises(TypeError, match="GENESIS model"):
        GENESISGuide(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mask_upscales"):
        preset("tiny", mask_upscales=(4, 2, 2))
    with pytest.raises(ValueError, match="mask_filters"):
        preset("tiny", mask_filters=(8, 4, 2))
    with pytest.raises(ValueError, match="comp_downsample"):
        preset("tiny", comp_downsample=3)
    with pytest.raises(ValueError, match="unknown GENESIS preset"):
        preset("nope")


def test_condition_do_and_predictive():
    model, guide = tiny()
    x = torch.rand(2, 1, 32, 32)
    value = torch.randn(2, 3)
    tr = poutine.trace(pyro.condition(model, data={"z_mask_1": value})).get_trace(batch_size=2)
    assert tr.nodes["z_mask_1"]["is_observed"] and torch.equal(tr.nodes["z_mask_1"]["value"], value)
    first = torch.sigmoid(model.mask_logits(value))
    assert torch.allclose(tr.nodes["x"]["fn"].weights[:, 0], first, atol=1e-6)  # m_1 = sigmoid(a_1)
    fixed = {n: s["value"].detach() for n, s in poutine.trace(model).get_trace(batch_size=2).nodes.items() if n.startswith("z")}
    a, b = (poutine.trace(poutine.do(model, data=fixed)).get_trace(batch_size=2) for _ in range(2))
    assert not a.nodes["z_mask_1"]["is_observed"]
    assert torch.equal(a.nodes["x"]["fn"].mean, b.nodes["x"]["fn"].mean)  # every latent intervened on: one image
    z_mask = torch.stack([fixed[f"z_mask_{k}"] for k in (1, 2, 3)], -2)
    assert torch.allclose(a.nodes["x"]["fn"].weights, model.masks(z_mask))
    for parallel in (False, True):
        out = Predictive(model, guide=guide, num_samples=3, parallel=parallel)(x)
        assert out["z_mask_2"].shape == (3, 2, 3) and out["z_comp_3"].shape == (3, 2, 2)
        assert out["x"].shape[-4:] == (2, 1, 32, 32)
    prior = Predictive(model, num_samples=3, parallel=True)(batch_size=2)
    assert prior["z_comp_1"].shape == (3, 2, 2) and prior["x"].shape == (3, 2, 1, 32, 32)


@pytest.mark.parametrize("elbo", [Trace_ELBO(max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)], ids=["trace", "meanfield"])
def test_svi_with_validation_reduces_the_loss(elbo):
    model, guide = tiny()
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:16, 8:16] = 1.0
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), elbo)
    losses = [svi.step(x) for _ in range(15)]
    assert all(math.isfinite(l) for l in losses) and sum(losses[-5:]) < sum(losses[:5])


def test_the_broadcast_decoder_is_the_convolution_of_the_tiled_latent():
    """Its first layer is computed as a linear map of z plus the coordinates' convolution: the same
    values as the convolution of z tiled over the grid with the coordinate channels (Watters et al.)."""
    d = BroadcastDecoder(5, 3, 6, 3, 10)
    z = torch.randn(2, 4, 5)
    tiled = d.tiled(z)
    assert tiled.shape == (2, 4, 7, 16, 16) and torch.equal(tiled[1, 2, :5, 7, 3], z[1, 2])
    assert torch.allclose(tiled[0, 0, 5, :, 0], torch.linspace(-1, 1, 16)) and torch.allclose(tiled[0, 0, 6, 0], torch.linspace(-1, 1, 16))
    plain = d.rest(d.first(tiled.flatten(0, 1))).reshape(2, 4, 3, 10, 10)
    assert torch.allclose(d(z), plain, atol=1e-5)


def lstm_gaussian(ar, inp, h, c):
    """One step of an AutoregressiveGaussian from its layers: an LSTM cell, then the head's MLP split
    into a mean and a softplus std."""
    h, c = torch.nn.LSTMCell.forward(ar.lstm, inp, (h, c))
    return gaussian(ar.head, h), h, c


def gaussian(head, h):
    loc, sd = head.mlp(h).chunk(2, -1)
    return Normal(loc, F.softplus(sd))


def genesis_loss_by_hand(model, guide, x, values, beta, sigma):
    """GENESIS's negative beta-ELBO (docs/genesis.md), batch mean, from the layers and the draws."""
    B, K, size = x.shape[0], model.cfg.num_components, model.cfg.image_size
    features = guide.encoder(x)
    (qh, qc), (ph, pc) = [(ar.h0.expand(B, -1), ar.c0.expand(B, -1)) for ar in (guide.mask_posterior, model.mask_prior)]
    prev = torch.zeros(B, model.cfg.z_mask_dim)
    scope, masks, kl = torch.ones(B, 1, size, size), [], 0.0
    for k in range(1, K + 1):
        zm, zc = values[f"z_mask_{k}"], values[f"z_comp_{k}"]
        q, qh, qc = lstm_gaussian(guide.mask_posterior, torch.cat([features, prev], -1), qh, qc)
        p, ph, pc = lstm_gaussian(model.mask_prior, prev, ph, pc)
        kl = kl + kl_divergence(q, p).sum()
        inside = torch.sigmoid(model.mask_decoder(zm))
        masks.append(scope * inside if k < K else scope)  # stick-breaking, eq. (2)
        scope = scope * (1 - inside)
        q = gaussian(guide.comp_posterior, guide.comp_encoder(torch.cat([x, masks[-1]], 1)))
        kl = kl + kl_divergence(q, gaussian(model.comp_prior, zm)).sum()
        prev = zm
    d = model.comp_decoder
    z_comp = torch.stack([values[f"z_comp_{k}"] for k in range(1, K + 1)], 1)
    small = torch.sigmoid(d.rest(d.first(d.tiled(z_comp).flatten(0, 1))))
    means = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).reshape(B, K, -1, size, size)
    per_component = torch.stack([masks[k].log() + Normal(means[:, k], sigma).log_prob(x).sum(1, keepdim=True) for k in range(K)])
    loglik = torch.logsumexp(per_component, 0).sum()  # per pixel: log sum_k m_k prod_c N(x_c; mu_kc, sigma)
    return (beta * kl - loglik) / B, -loglik / B, kl / B


@pytest.mark.parametrize("beta", [1.0, 10.0])
def test_the_loss_is_the_beta_elbo_recomputed_by_hand(beta):
    r = GENESISRecipe()
    cfg = config(beta=beta, sigma=0.2)
    model, guide = r.build(cfg, torch.device("cpu"))
    x = torch.rand(3, 1, 32, 32)
    traced = poutine.trace(guide)
    loss, logs = r.loss(model, traced, x, 0, cfg)
    values = {n: traced.trace.nodes[n]["value"].detach() for n in LATENTS}
    with torch.no_grad():
        want, nll, kl = genesis_loss_by_hand(model, guide, x, values, beta, 0.2)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert logs["nll"] == pytest.approx(float(nll), rel=1e-5) and logs["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert logs["beta"] == beta


@pytest.mark.parametrize("name,count", [("paper", 13_989_410), ("paper-arrow", 13_991_652)])
def test_paper_presets_have_the_supplements_parameter_count(name, count):
    """Supplement Table 3: GENESIS 13.9M on every dataset (the config's docstring says how the count comes about)."""
    model = GENESIS.preset(name)
    n = n_params(model, GENESISGuide(model))
    assert n == count and abs(n - 13.9e6) / 13.9e6 < 0.03


def test_the_number_of_components_does_not_change_the_parameters():
    a, b = GENESIS.preset("tiny"), GENESIS.preset("tiny", num_components=7)
    assert n_params(a, GENESISGuide(a)) == n_params(b, GENESISGuide(b))


def test_the_learning_rate_drops_at_lr_drop_step():
    r = GENESISRecipe()
    cfg = config(lr=1e-3, lr_low=1e-4, lr_drop_step=3)
    model, guide = r.build(cfg, torch.device("cpu"))
    optimizer = r.make_optimizer(list(model.parameters()) + list(guide.parameters()), cfg)
    assert isinstance(optimizer, torch.optim.Adam)
    scheduler = r.make_scheduler(optimizer, cfg)
    seen = []
    for _ in range(5):  # as the trainer: the update of step s, then scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4])
    # a resumed run rebuilds the scheduler and loads its state: it stays at the low rate
    again = r.make_optimizer(list(model.parameters()) + list(guide.parameters()), cfg)
    restored = r.make_scheduler(again, cfg)
    restored.load_state_dict(scheduler.state_dict())
    again.load_state_dict(optimizer.state_dict())
    restored.step()
    assert again.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_recipe_defaults_and_bad_values():
    r = get_recipe("genesis")
    assert isinstance(r, GENESISRecipe) and r.datasets == ("mnist4", "mnist10", "mnist4-10", "arrow")
    for ds in r.datasets:
        full = {**TRAINER_DEFAULTS, **r.default_config(ds), "model": "genesis"}
        r.validate_config(full)
        json.dumps(full)
    digits, arrow = r.default_config("mnist4"), r.default_config("arrow")
    assert (digits["beta"], digits["preset"], digits["lr"], digits["lr_low"]) == (10.0, "cpu", 1e-3, 1e-4)
    assert (arrow["beta"], arrow["preset"]) == (15.0, "arrow-cpu")
    r.validate_config(config())
    for key, value in (("num_components", 0), ("preset", "nope"), ("image_size", 64), ("beta", 0), ("lr_low", 0),
                       ("lr_drop_step", -1), ("sigma", 0)):
        with pytest.raises(ValueError, match=key):
            r.validate_config(config(**{key: value}))
    with pytest.raises(ValueError, match="channel"):
        r.validate_config(config("arrow"))


@pytest.mark.slow
def test_cli_trains_evaluates_and_draws(tmp_path):
    """The "cpu" preset (64x64: the digit scenes need more than the tiny preset's 32 px), 2 steps of batch 2."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "inference.svi", "--model", "genesis", "--dataset", "mnist4", "--steps", "2", "--batch-size", "2",
           "--out", str(out), "--num-train", "8", "--set", "num_val=4",
           "--set", "cache_dir=", "--set", "lr_drop_step=1", "--val-every", "2", "--log-every", "1"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2] and lines[0]["logs"]["beta"] == 10
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == ["genesis_generations.png", "genesis_reconstructions.png"]
    from inference.training.checkpoint import find_checkpoint, load_checkpoint

    ckpt = load_checkpoint(find_checkpoint(out))
    assert ckpt["scheduler_state"]["last_epoch"] == 2 and ckpt["optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    res = subprocess.run([sys.executable, "-m", "inference.evaluate", str(out), "-n", "4", "-m", "ll", "--particles", "2",
                          "--no-plots"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    report = json.loads(next(out.glob("**/metrics_test.json")).read_text())
    assert "ll" in report["results"] and report["results"]["ll"] < 0
