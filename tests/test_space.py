"""SPACE: Pyro's tools on the model and guide, the loss recomputed by hand, the recipe and CLI."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from guides import SPACEGuide
from inference.recipes import get_recipe
from inference.recipes.space import SPACERecipe
from inference.training.config import TRAINER_DEFAULTS
from pyro_scenes import SPACE
from pyro_scenes.space import PixelMixture, preset
from pyro_scenes.space.networks import stick_breaking

ROOT = Path(__file__).resolve().parents[1]
LATENTS = ["z_pres", "z_where", "z_depth", "z_what", "z_mask_1", "z_comp_1", "z_mask_2", "z_comp_2"]


pytestmark = pytest.mark.usefixtures("clean_pyro")


def tiny():
    model = SPACE.preset("tiny")
    return model, SPACEGuide(model)


def config(dataset="mnist4", **overrides):
    return {**TRAINER_DEFAULTS, **SPACERecipe().default_config(dataset), "model": "space", "dataset": dataset,
            "preset": "tiny", "image_size": 32, "z_what_dim": 4, "num_components": 2, **overrides}


def test_sites_shapes_and_scales():
    model, guide = tiny()
    x = torch.rand(3, 1, 32, 32)
    gtr = poutine.trace(guide).get_trace(x)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    names = [n for n, s in mtr.nodes.items() if s["type"] == "sample" and n not in ("batch", "cells")]
    assert names == LATENTS + ["x"] == model.latent_sites() + ["x"]
    assert mtr.nodes["z_what"]["value"].shape == (3, 16, 4) and mtr.nodes["z_mask_2"]["value"].shape == (3, 1, 3)
    assert mtr.nodes["x"]["fn"].batch_shape == (3, 1) and mtr.nodes["x"]["fn"].event_shape == (1, 32, 32)
    gate = gtr.nodes["z_pres"]["value"].clamp(min=model.cfg.gate_min)
    for name in ("z_where", "z_depth", "z_what"):  # per-object sites weighted by presence, model and guide
        assert torch.allclose(mtr.nodes[name]["scale"], gate) and torch.allclose(gtr.nodes[name]["scale"], gate)
    assert model(batch_size=2).shape == (2, 1, 32, 32) and model.sample(2, mode=True).shape == (2, 1, 32, 32)


def test_condition_do_and_predictive():
    model, guide = tiny()
    x = torch.rand(2, 1, 32, 32)
    empty = torch.zeros(2, 16)
    tr = poutine.trace(pyro.condition(model, data={"z_pres": empty})).get_trace(batch_size=2)
    assert tr.nodes["z_pres"]["is_observed"] and torch.equal(tr.nodes["z_pres"]["value"], empty)
    weights = tr.nodes["x"]["fn"].weights
    assert weights[..., 0, :, :, :].abs().max() < 1e-6  # no object: alpha is 0, the background explains all
    assert torch.allclose(weights.sum(-4), torch.ones(()), atol=1e-5)
    tr = poutine.trace(poutine.do(model, data={"z_pres": empty})).get_trace(batch_size=2)
    assert not tr.nodes["z_pres"]["is_observed"] and tr.nodes["x"]["fn"].weights[..., 0, :, :, :].abs().max() < 1e-6
    for parallel in (False, True):
        out = Predictive(model, guide=guide, num_samples=3, parallel=parallel)(x)
        assert out["z_what"].shape == (3, 2, 16, 4) and out["x"].shape[-3:] == (1, 32, 32)


def test_svi_with_validation_reduces_the_loss():
    model, guide = tiny()
    x = torch.zeros(8, 1, 32, 32)
    x[:, :, 8:16, 8:16] = 1.0
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), TraceMeanField_ELBO(max_plate_nesting=2))
    losses = [svi.step(x) for _ in range(30)]
    assert all(math.isfinite(l) for l in losses) and sum(losses[-5:]) < sum(losses[:5])


def test_stick_breaking_and_the_pixel_mixture():
    logits = torch.randn(2, 3, 1, 4, 4)
    m = stick_breaking(logits)
    s = torch.sigmoid(logits)
    assert torch.allclose(m[:, 0], s[:, 0]) and torch.allclose(m[:, 1], (1 - s[:, 0]) * s[:, 1])
    assert torch.allclose(m[:, 2], (1 - s[:, 0]) * (1 - s[:, 1]))
    w = torch.softmax(torch.randn(2, 3, 1, 4, 4), 1)
    means = torch.rand(2, 3, 3, 4, 4)
    scales = torch.tensor([0.1, 0.2, 0.3])
    d = PixelMixture(w, means, scales)
    x = torch.rand(2, 3, 4, 4)
    by_hand = torch.zeros(2)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                p = sum(float(w[b, k, 0, i, j]) * math.exp(float(dist.Normal(means[b, k, :, i, j], scales[k]).log_prob(x[b, :, i, j]).sum()))
                        for k in range(3))
                by_hand[b] += math.log(p)
    assert torch.allclose(d.log_prob(x), by_hand, rtol=1e-5)
    torch.manual_seed(1)
    draws = d.sample((4000,))
    assert draws.shape == (4000, 2, 3, 4, 4) and (draws.mean(0) - d.mean).abs().max() < 0.03


def test_loss_equals_the_objective_recomputed_by_hand():
    """SPACE's negative ELBO (docs/space.md) from the guide's draws, with torch's distributions."""
    r = SPACERecipe()
    cfg = config()
    model, guide = r.build(cfg, torch.device("cpu"))
    x = torch.rand(3, 1, 32, 32)
    step = 1000
    traced = poutine.trace(guide)
    loss, logs = r.loss(model, traced, x, step, cfg)
    g = traced.trace.nodes
    v = {n: g[n]["value"] for n in LATENTS}
    rho = cfg["rho_start"] + (cfg["rho_end"] - cfg["rho_start"]) * step / cfg["rho_steps"]
    tau = cfg["tau_start"] + (cfg["tau_end"] - cfg["tau_start"]) * step / cfg["tau_steps"]
    assert logs["rho"] == pytest.approx(rho) and g["z_pres"]["fn"].temperature == pytest.approx(tau)
    # KL of z_pres: Bernoulli(q) against Bernoulli(rho)
    q = torch.sigmoid(g["z_pres"]["fn"].logits)
    kl = (q * torch.log(q / rho) + (1 - q) * torch.log((1 - q) / (1 - rho))).sum()
    # per-object KLs against the fixed priors, weighted by z_pres
    gate = v["z_pres"].clamp(min=1e-5)
    priors = {"z_where": dist.Normal(torch.tensor(cfg["where_mean"]), torch.tensor(cfg["where_std"])),
              "z_depth": dist.Normal(0.0, 1.0), "z_what": dist.Normal(0.0, 1.0)}
    for name, p in priors.items():
        qn = g[name]["fn"].base_dist
        kl = kl + (gate * kl_divergence(dist.Normal(qn.loc, qn.scale), p).sum(-1)).sum()
    # background: autoregressive mask prior (the model's LSTM on the guide's draws) and component prior
    state = model.mask_prior.init_state((3, 1))
    masks, scope = [], torch.ones(3, 1, 1, 32, 32)
    for k in (1, 2):
        loc, scale, (h, c) = model.mask_prior(state)
        qm = g[f"z_mask_{k}"]["fn"].base_dist
        kl = kl + kl_divergence(dist.Normal(qm.loc, qm.scale), dist.Normal(loc, scale)).sum()
        loc, scale = model.comp_prior(v[f"z_mask_{k}"])
        qc = g[f"z_comp_{k}"]["fn"].base_dist
        kl = kl + kl_divergence(dist.Normal(qc.loc, qc.scale), dist.Normal(loc, scale)).sum()
        s = torch.sigmoid(model.bg_decoders.mask_logits(v[f"z_mask_{k}"]))
        masks.append(scope * s if k < 2 else scope)
        scope = scope * (1 - s)
        state = (v[f"z_mask_{k}"], h, c)
    # likelihood: alpha * N(x; fg, 0.15) + (1 - alpha) sum_k m_k N(x; mu_k, 0.15), per pixel
    z_mask = torch.cat([v["z_mask_1"], v["z_mask_2"]], -2)
    z_comp = torch.cat([v["z_comp_1"], v["z_comp_2"]], -2)
    weights, means = model.render(v["z_pres"], v["z_where"], v["z_depth"], v["z_what"], z_mask, z_comp)
    alpha, fg = weights[:, 0], means[:, 0]
    assert torch.allclose(weights[:, 1:], (1 - alpha.unsqueeze(1)) * torch.cat(masks, 1), atol=1e-6)
    comps = model.bg_decoders.component_means(z_comp)
    terms = [alpha.clamp(min=1e-10).log() + dist.Normal(fg, 0.15).log_prob(x)]
    terms += [((1 - alpha) * masks[k][:, 0]).clamp(min=1e-10).log() + dist.Normal(comps[:, k], 0.15).log_prob(x) for k in (0, 1)]
    loglik = torch.logsumexp(torch.stack(terms), 0).sum()
    expected = (kl - loglik) / 3
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_bernoulli_prior_handler_sets_the_annealed_prior_in_the_model_only():
    from inference.handlers import BernoulliPrior

    model, guide = tiny()
    tr = poutine.trace(BernoulliPrior(lambda step: 0.1 + 0.0 * step, step=5)(model)).get_trace(batch_size=2)
    assert torch.allclose(torch.sigmoid(tr.nodes["z_pres"]["fn"].logits), torch.tensor(0.1))
    assert tr.nodes["z_pres"]["fn"].temperature == model.cfg.fg.pres_temperature
    plain = poutine.trace(model).get_trace(batch_size=2)
    assert torch.allclose(torch.sigmoid(plain.nodes["z_pres"]["fn"].logits), torch.tensor(model.cfg.pres_prior))


def test_recipe_defaults_and_bad_values():
    r = get_recipe("space")
    assert isinstance(r, SPACERecipe) and r.datasets == ("mnist4", "mnist10", "mnist4-10", "arrow")
    for ds in r.datasets:
        full = {**TRAINER_DEFAULTS, **r.default_config(ds), "model": "space"}
        r.validate_config(full)
        json.dumps(full)
    assert r.default_config("mnist4")["curriculum_alpha"] == 1.0 and r.default_config("arrow")["curriculum_alpha"] == 0.9
    for key, value in (("curriculum_alpha", 1.5), ("num_components", 0), ("preset", "nope"), ("image_size", 128), ("where_std", [1, 1, 1]),
                       ("rho_end", 1.0)):
        with pytest.raises(ValueError, match=key):
            r.validate_config(config(**{key: value}))
    with pytest.raises(ValueError, match="channel"):
        r.validate_config(config("arrow"))
    with pytest.raises(ValueError, match="bg_upscales"):
        preset("tiny", bg_upscales=(4, 4))
    with pytest.raises(TypeError, match="SPACE model"):
        SPACEGuide(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_cli_run_evaluate_and_likelihood(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "inference.svi", "--model", "space", "--dataset", "mnist4", "--steps", "2", "--batch-size", "2",
           "--out", str(out), "--num-train", "8", "--set", "num_val=4", "--set", "cache_dir=", "--val-every", "2",
           "--log-every", "1"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2] and {"rho", "tau"} <= set(lines[0]["logs"])
    val = json.loads((out / "val.jsonl").read_text().splitlines()[-1])
    assert {"box-ap@0.5", "count-accuracy", "representation"} <= set(val["metrics"])
    assert sorted(p.name for p in (out / "figures").glob("space_*.png")) == ["space_decomposition.png", "space_reconstructions.png"]
    res = subprocess.run([sys.executable, "-m", "inference.evaluate", str(out), "-n", "4", "-m", "box-ap,count-accuracy,ll",
                          "--particles", "2", "--no-plots"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    report = json.loads(next(out.glob("**/metrics_test.json")).read_text())
    assert {"box-ap@0.5", "count-accuracy", "ll"} <= set(report["results"])


def test_the_curriculum_fixes_alpha_for_its_first_steps_only():
    r = SPACERecipe()
    cfg = config(curriculum_steps=10, curriculum_alpha=0.7)
    model, guide = r.build(cfg, torch.device("cpu"))
    x = torch.rand(2, 1, 32, 32)
    for step, fixed in ((0, True), (9, True), (10, False)):
        on_model, on_guide = r.handlers(step, cfg)
        gtr = poutine.trace(on_guide(guide)).get_trace(x)
        mtr = poutine.trace(poutine.replay(on_model(model), trace=gtr)).get_trace(x)
        alpha = mtr.nodes["x"]["fn"].weights[..., 0, :, :, :]
        assert torch.allclose(alpha, torch.tensor(cfg["curriculum_alpha"])) == fixed
