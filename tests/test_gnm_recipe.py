"""GNMRecipe: configs, validation, the loss's schedules, figures, and a short CLI run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from inference.recipes import get_recipe
from inference.recipes.gnm import GNMRecipe
from inference.training.config import TRAINER_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def config(dataset="mnist4", **overrides):
    cfg = dict(TRAINER_DEFAULTS)
    cfg.update(GNMRecipe().default_config(dataset))
    cfg.update(model="gnm", dataset=dataset, **overrides)
    return cfg


def test_registered_and_defaults_validate():
    r = get_recipe("gnm")
    assert isinstance(r, GNMRecipe) and r.datasets == ("mnist4", "mnist10", "mnist4-10", "arrow")
    for ds in r.datasets:
        cfg = config(ds)
        r.validate_config(cfg)
        json.dumps(cfg)
        assert cfg["batch_size"] == 32 and cfg["lr"] == 1e-4 and cfg["grad_clip"] == 1.0
    assert config("arrow")["curriculum"] and not config("mnist4")["curriculum"]
    assert config("arrow")["aux_where_mean"][0] == -1.5 and config("mnist10")["aux_where_mean"][0] == -1.6
    assert r.grad_clip_norm(config()) == 1.0


@pytest.mark.parametrize("key,value,match", [
    ("draw_steps", 0, "draw_steps"),
    ("preset", "nope", "preset"),
    ("image_size", 128, "image_size"),
    ("aux_where_std", [0.1, 0.3, 1.0], "aux_where_std"),
    ("rho_start", 1.5, "rho_start"),
    ("tau_finish", 10, "tau_finish"),
    ("curriculum", "yes", "curriculum"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        GNMRecipe().validate_config(config(**{key: value}))


def test_authors_preset_through_the_recipe():
    pyro.clear_param_store()
    cfg = config(preset="mnist", image_size=128)
    GNMRecipe().validate_config(cfg)
    model, guide = GNMRecipe().build(cfg, torch.device("cpu"))
    assert sum(p.numel() for p in list(model.parameters()) + list(guide.parameters())) == 2_930_708
    opt = GNMRecipe().make_optimizer(list(model.parameters()) + list(guide.parameters()), cfg)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["lr"] == 1e-4
    gnm8 = GNMRecipe().model_config(config(preset="mnist", image_size=128, draw_steps=8))
    assert gnm8.draw_steps == 8


def test_schedules_match_spec():
    s = GNMRecipe().schedules(config("arrow", beta_g_end=2.0))
    assert s["beta_g"](0) == 0 and s["beta_g"](50_000) == pytest.approx(1.0) and s["beta_g"](200_000) == 2.0
    assert s["tau"](1000) == 1.0 and s["tau"](20_000) == 0.5 and s["tau"](10_500) == pytest.approx(0.75)
    assert s["rho"](0) == 0.1 and s["rho"](4000) == pytest.approx(0.001)
    assert s["beta_where"](0) == 10 and s["beta_where"](500) == 1
    assert s["beta_bg"](0) == 50 and s["beta_bg"](25_000) == pytest.approx(25.5)


def test_loss_logs_and_figures(tmp_path):
    from pyro import poutine
    from torch.distributions import kl_divergence

    from inference.figures.gnm import reconstruct
    from pyro_scenes.gnm.render import render_alpha, where_from_raw

    pyro.clear_param_store()
    torch.manual_seed(0)
    r = GNMRecipe()
    cfg = config("arrow", preset="arrow-tiny", image_size=32, z_what_dim=6)
    model, guide = r.build(cfg, torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32)
    traced = poutine.trace(guide)
    loss, logs = r.loss(model, traced, x, 100, cfg)
    assert loss.dim() == 0 and loss.requires_grad
    assert set(logs) == {"beta_g", "tau", "rho", "aux_kl_z_pres", "aux_kl_z_where", "aux_kl_z_depth", "aux_kl_z_what", "aux_kl_z_bg",
                         "kl_g_1", "kl_g_2", "kl_g_3", "kl_g_4"}
    # the logged schedules at step 100 (docs/gnm.md): beta_g 0 -> 1 over 100k steps, tau 1 until
    # step 1k, rho 0.1 -> 0.001 over 4k steps
    assert logs["beta_g"] == pytest.approx(1e-3) and logs["tau"] == 1.0 and logs["rho"] == pytest.approx(0.1 - 0.099 / 40)
    # the logged KLs are those of the draws of this loss: aux factors from the guide trace, KL_g
    # per StructDRAW step against the model's prior replayed on the same z^g
    gtr = traced.trace
    for name in ["pres", "where", "depth", "what", "bg"]:
        assert logs[f"aux_kl_z_{name}"] == pytest.approx(float(gtr.nodes[f"aux_kl_z_{name}"]["fn"].log_factor.detach().sum()) / 2, rel=1e-5)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    for l in range(1, 5):
        kl = kl_divergence(gtr.nodes[f"z_g_{l}"]["fn"], mtr.nodes[f"z_g_{l}"]["fn"]).detach().sum() / 2
        assert logs[f"kl_g_{l}"] == pytest.approx(float(kl), rel=1e-5) and float(kl) > 0, l
    # the reconstructions drawn are the renderings of the posterior means with hard z_pres
    info = reconstruct(model, guide, x)
    app, alpha = model.glimpse_decoder(info["z_what"])
    bg = model.bg_decoder(info["z_bg"])
    ref = render_alpha(app, alpha, info["pres"], info["z_depth"], where_from_raw(info["z_where"], 4), bg, 32)[0]
    assert torch.allclose(info["recon"], ref, atol=1e-5)
    paths = r.figures(model, guide, {"image": x}, tmp_path, 0)
    assert [p.name for p in paths] == ["gnm_reconstructions.png", "gnm_generations.png", "gnm_zs_resampling.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.parametrize("step,tau", [(0, 1.0), (10_500, 0.75), (20_000, 0.5)])
def test_the_loss_draws_z_pres_at_the_scheduled_temperature_in_model_and_guide(step, tau):
    """tau anneals 1 -> 0.5 over steps 1k-20k: the guide draws z_pres at it (the relaxed sample
    the loss differentiates) and the model's z_pres site carries the same temperature."""
    from pyro import poutine

    pyro.clear_param_store()
    torch.manual_seed(0)
    r = GNMRecipe()
    cfg = config("mnist4", preset="tiny", image_size=32, z_what_dim=4)
    model, guide = r.build(cfg, torch.device("cpu"))
    assert model.cfg.pres_temperature not in (1.0, 0.75)  # the scheduled values are not the distribution's own
    x = torch.rand(2, 1, 32, 32)
    traced_guide = poutine.trace(guide)
    _, logs = r.loss(model, traced_guide, x, step, cfg)
    assert logs["tau"] == pytest.approx(tau)
    assert traced_guide.trace.nodes["z_pres"]["fn"].temperature == pytest.approx(tau)
    m, g, _ = r.handlers(model, guide, step, cfg)
    gtr = poutine.trace(g).get_trace(x)
    mtr = poutine.trace(poutine.replay(m, trace=gtr)).get_trace(x)
    assert gtr.nodes["z_pres"]["fn"].temperature == mtr.nodes["z_pres"]["fn"].temperature == pytest.approx(tau)


@pytest.mark.slow
def test_cli_run_and_likelihood(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "inference.svi", "--model", "gnm", "--dataset", "mnist4", "--steps", "2", "--batch-size", "2",
           "--out", str(out), "--num-train", "8", "--set", "num_val=4", "--set", "cache_dir=", "--val-every", "0", "--log-every", "1"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2] and "aux_kl_z_pres" in lines[0]["logs"]
    assert len(list((out / "figures").glob("gnm_*.png"))) == 3
    res = subprocess.run([sys.executable, "-m", "inference.likelihood", str(out), "--particles", "3", "--num-images", "2", "--batch-size", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "log p(x) =" in res.stdout and "K = 3" in res.stdout


def test_intervention_example(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gnm_intervene", ROOT / "examples" / "gnm_intervene.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pyro.clear_param_store()
    out = tmp_path / "int.png"
    r = mod.main(["--out", str(out)])
    assert out.stat().st_size > 1000
    # removing an object changes the image only where that object was drawn; moving changes it
    diff = (r["recon"] - r["removed"]).abs()[0, 0]
    x0, y0, x1, y1 = r["boxes"]["before"][r["gone"]].tolist()
    inside = torch.zeros_like(diff, dtype=torch.bool)
    inside[max(int(y0) - 1, 0):int(y1) + 2, max(int(x0) - 1, 0):int(x1) + 2] = True
    assert diff[inside].sum() > 0 and diff[~inside].max() < 1e-5
    assert not torch.allclose(r["recon"], r["moved"])
