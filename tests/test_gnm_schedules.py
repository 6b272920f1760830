"""GNM on a budget (issue 9): the delayed beta_g ramp, the ``budget`` schedule preset, KL_g per
StructDRAW step and the collapse warning, the layout checks and ``validation_metrics``."""
import json
import math
import warnings

import pyro
import pytest
import torch
from pyro import poutine

from inference.metrics.rules import LAYOUT_RULES, layout_mnist4, layout_mnist10
from inference.recipes import gnm as gnm_recipe
from inference.recipes.gnm import SCHEDULES, GNMRecipe
from inference.training.config import TRAINER_DEFAULTS, resolve_config


def config(dataset="mnist4", **overrides):
    cfg = dict(TRAINER_DEFAULTS)
    cfg.update(GNMRecipe().default_config(dataset))
    cfg.update(model="gnm", dataset=dataset, **overrides)
    return cfg


def tiny(**overrides):
    """A 32x32 MNIST-style model with 3 StructDRAW steps (not validated: no 32 px MNIST data)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    r = GNMRecipe()
    cfg = config("mnist4", preset="tiny", image_size=32, z_what_dim=4, draw_steps=3, **overrides)
    model, guide = r.build(cfg, torch.device("cpu"))
    return r, cfg, model, guide


# ---------------------------------------------------------------------- schedules
def test_default_ramp_is_unchanged():
    cfg = config()
    assert cfg["beta_g_begin"] is None and cfg["schedule"] == "authors"  # null: the schedule preset's
    beta = GNMRecipe().schedules(cfg)["beta_g"]
    assert beta(0) == 0 and beta(50_000) == pytest.approx(0.5) and beta(100_000) == 1.0


def test_beta_g_ramp_starts_at_beta_g_begin():
    beta = GNMRecipe().schedules(config(beta_g_begin=1_000, beta_g_steps=2_000, beta_g_end=2.0))["beta_g"]
    assert beta(0) == 0 and beta(1_000) == 0  # held at 0 up to the begin
    assert beta(1_500) == pytest.approx(0.5) and beta(2_000) == pytest.approx(1.0)  # mid-ramp
    assert beta(3_000) == 2.0 and beta(50_000) == 2.0  # the end: begin + steps


def test_short_preset_is_budget_at_a_tenth_of_the_steps():
    assert SCHEDULES["short"] == {k: v // 10 for k, v in SCHEDULES["budget"].items()}


def test_budget_preset():
    b = SCHEDULES["budget"]
    begin, end = b["beta_g_begin"], b["beta_g_begin"] + b["beta_g_steps"]
    assert 0 < begin < end <= 15_000  # z^s first, then the ramp, then >= 5k steps for the prior
    cfg = resolve_config(GNMRecipe(), "mnist4", sets={"schedule": "budget"})  # --set schedule=budget
    GNMRecipe().validate_config(cfg)
    s = GNMRecipe().schedules(cfg)
    assert s["beta_g"](0) == 0 and s["beta_g"](6_000) == 0
    assert s["beta_g"](10_000) == pytest.approx(0.5) and s["beta_g"](14_000) == 1.0 and s["beta_g"](20_000) == 1.0
    assert s["tau"](1_000) == 1.0 and s["tau"](6_000) == 0.5
    assert s["rho"](4_000) == pytest.approx(0.001)
    assert s["beta_bg"](10_000) == 1.0
    # a key set explicitly keeps its value; beta_g_end is not part of the preset
    s = GNMRecipe().schedules(config(schedule="budget", beta_g_steps=4_000, beta_g_end=2.0))
    assert s["beta_g"](8_000) == pytest.approx(1.0) and s["beta_g"](10_000) == 2.0
    # the authors' preset is the defaults; a key set to the authors' value keeps it under another preset
    assert all(GNMRecipe.schedule_config(config())[k] == v for k, v in SCHEDULES["authors"].items())
    s = GNMRecipe().schedules(config(schedule="budget", beta_g_begin=0, beta_g_steps=100_000))
    assert s["beta_g"](50_000) == pytest.approx(0.5) and s["tau"](6_000) == 0.5


@pytest.mark.parametrize("key,value,match", [
    ("beta_g_begin", -1, "beta_g_begin"),
    ("beta_g_begin", 1.5, "beta_g_begin"),
    ("beta_g_begin", True, "beta_g_begin"),
    ("schedule", "fast", "schedule"),
    ("schedule", ["budget"], "schedule"),
    ("val_generations", -1, "val_generations"),
])
def test_bad_schedule_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        GNMRecipe().validate_config(config(**{key: value}))


def test_runs_saved_before_these_settings_keep_the_authors_schedule():
    added = ("schedule", "beta_g_begin", "val_generations", "sigma")
    old = GNMRecipe().complete_config({k: v for k, v in config().items() if k not in added})
    assert [old[k] for k in added] == ["authors", 0, 100, None]  # what those runs were trained with
    GNMRecipe().validate_config(old)
    assert GNMRecipe().schedules(old)["beta_g"](50_000) == pytest.approx(0.5)


def test_runs_saved_before_null_annealing_keys_keep_their_preset():
    """Such configs hold the authors' value where the ``schedule`` preset applied (gnm-mnist4 was
    trained with schedule=budget so); a value set by hand stays."""
    from inference.pretrained import info

    shipped = GNMRecipe().complete_config(info("gnm-mnist4")["config"])
    assert GNMRecipe.schedule_config(shipped) == {**shipped, **SCHEDULES["budget"]}
    saved = {**config(), **SCHEDULES["authors"], "schedule": "budget", "tau_finish": 7_000}
    completed = GNMRecipe.schedule_config(GNMRecipe().complete_config(saved))
    assert completed == {**saved, **SCHEDULES["budget"], "tau_finish": 7_000}


# ---------------------------------------------------------------------- KL_g per step and collapse
def _hand_kl(q, p):
    """KL between diagonal Gaussians, summed over the event, per batch element."""
    q, p = q.base_dist, p.base_dist
    kl = torch.log(p.scale / q.scale) + (q.scale ** 2 + (q.loc - p.loc) ** 2) / (2 * p.scale ** 2) - 0.5
    return kl.sum(-1)


def test_loss_logs_kl_g_per_step_and_they_sum_to_kl_g():
    r, cfg, model, guide = tiny()
    x = torch.rand(3, 1, 32, 32)
    traced = poutine.trace(guide)
    _, logs = r.loss(model, traced, x, 500, cfg)
    assert [k for k in logs if k.startswith("kl_g_")] == ["kl_g_1", "kl_g_2", "kl_g_3"]
    gtr = traced.trace
    with torch.no_grad():
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    per_step = [float(_hand_kl(gtr.nodes[f"z_g_{l}"]["fn"], mtr.nodes[f"z_g_{l}"]["fn"]).detach().mean()) for l in (1, 2, 3)]
    for l, want in enumerate(per_step, start=1):
        assert logs[f"kl_g_{l}"] == pytest.approx(want, rel=1e-5)
    assert sum(logs[f"kl_g_{l}"] for l in (1, 2, 3)) == pytest.approx(sum(per_step), rel=1e-5)
    assert all(isinstance(logs[f"kl_g_{l}"], float) and logs[f"kl_g_{l}"] > 0 for l in (1, 2, 3))


def test_collapse_warning_fires_once_after_the_ramp_starts(monkeypatch):
    r, cfg, model, guide = tiny(beta_g_begin=100, beta_g_steps=1_000)
    x = torch.rand(2, 1, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.loss(model, guide, x, 150, cfg)  # a live z^g (KL ~ tens of nats at init): no warning
    monkeypatch.setattr(gnm_recipe, "kl_g_per_step", lambda m, g: [0.01, 0.0, 0.02])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.loss(model, guide, x, 100, cfg)  # beta_g = 0: a free KL of 0 is no collapse
    with pytest.warns(RuntimeWarning, match=r"KL of z\^g is ~0: the global latent is collapsing"):
        _, logs = r.loss(model, guide, x, 150, cfg)
    assert logs["kl_g_2"] == 0.0 and logs["beta_g"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.loss(model, guide, x, 200, cfg)  # once per run
    with pytest.warns(RuntimeWarning, match="collapsing"):
        GNMRecipe().check_collapse(0.09, 0.5, 300)  # a new run warns again


# ---------------------------------------------------------------------- layout checks
def _centres(boxes):
    return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)


def test_layout_checks_accept_real_scenes_and_reject_broken_ones():
    from datasets import make_dataset

    for name in LAYOUT_RULES:
        b = make_dataset(name, "val", num_scenes=40, image_size=64, seed=0).generate(range(40))
        for i in range(40):
            c = _centres(b["boxes"][i][b["valid"][i]])
            assert LAYOUT_RULES[name](c, 64) == (True, "ok"), (name, i)
    rect = torch.tensor([[10.0, 10.0], [50.0, 10.0], [50.0, 40.0], [10.0, 40.0]])
    assert layout_mnist4(rect[torch.tensor([2, 0, 3, 1])], 64)[0]  # order of objects does not matter
    assert not layout_mnist4(rect + torch.tensor([[0.0, 0.0], [0.0, 9.0], [0.0, 0.0], [0.0, 0.0]]), 64)[0]
    assert layout_mnist4(rect[:3], 64) == (False, "3 objects, expected 4")
    ten = torch.tensor([[10, 10], [20, 20], [40, 10], [50, 10], [50, 20], [40, 40], [50, 50],
                        [10, 40], [10, 50], [20, 50]], dtype=torch.float32)
    assert layout_mnist10(ten, 64)[0]
    assert not layout_mnist10(torch.cat([ten[:9], torch.tensor([[60.0, 60.0]])]), 64)[0]


# ---------------------------------------------------------------------- validation metrics
KEYS = {"box-ap@0.5", "count-accuracy", "representation", "kl_g_per_step", "layout-inferred", "layout-generated"}


def _cpu_setup(n=8, **overrides):
    pyro.clear_param_store()
    torch.manual_seed(0)
    r = GNMRecipe()
    cfg = config("mnist4", num_val=n, val_items=n, batch_size=4, cache_dir="", **overrides)
    r.validate_config(cfg)
    model, guide = r.build(cfg, torch.device("cpu"))
    model.eval(), guide.eval()
    return r, cfg, model, guide, r.make_dataset(cfg, "val")


def test_validation_metrics_keys_and_ranges():
    r, cfg, model, guide, ds = _cpu_setup(val_generations=6)
    out = r.validation_metrics(model, guide, ds, 10, cfg)
    assert set(out) == KEYS
    json.dumps(out)
    for k in KEYS - {"kl_g_per_step", "representation"}:
        assert isinstance(out[k], float) and 0.0 <= out[k] <= 1.0, k
    assert isinstance(out["representation"], float)
    kl = out["kl_g_per_step"]
    assert len(kl) == cfg["draw_steps"] and all(isinstance(v, float) and v > 0 for v in kl)
    out = r.validation_metrics(model, guide, ds, 10, dict(cfg, val_generations=0))
    assert set(out) == KEYS - {"layout-generated"}


def test_validation_metrics_of_a_perfect_guide(monkeypatch):
    """A guide that returns the ground truth scores 1 on box AP, counts and inferred layouts."""
    r, cfg, model, guide, ds = _cpu_setup(n=32, val_generations=4)
    truth = ds.generate(range(32)) if hasattr(ds, "generate") else None
    images = torch.stack([ds[i]["image"] for i in range(32)])
    boxes = torch.stack([ds[i]["boxes"] for i in range(32)])
    valid = torch.stack([ds[i]["valid"] for i in range(32)])
    labels = torch.stack([ds[i]["labels"] for i in range(32)])
    assert truth is None or torch.equal(truth["boxes"], boxes)

    def infer(x):
        idx = [int(((images - xi).abs().flatten(1).sum(1)).argmin()) for xi in x]
        B, K = len(idx), model.cfg.num_cells
        out = dict(boxes=torch.zeros(B, K, 4), pres=torch.zeros(B, K), pres_prob=torch.zeros(B, K),
                   z_what=torch.randn(B, K, model.cfg.z_what_dim) * 0.01)
        for b, i in enumerate(idx):
            n = int(valid[i].sum())
            out["boxes"][b, :n] = boxes[i][valid[i]]
            out["pres"][b, :n] = 1.0
            out["pres_prob"][b, :n] = 0.9
            out["z_what"][b, :n, :10] += torch.nn.functional.one_hot(labels[i][valid[i]], 10).float()
        return out

    monkeypatch.setattr(guide, "infer", infer)
    out = r.validation_metrics(model, guide, ds, 10, cfg)
    assert out["box-ap@0.5"] == pytest.approx(1.0) and out["count-accuracy"] == 1.0
    assert out["layout-inferred"] == 1.0
    assert out["representation"] >= 0.9 and not math.isnan(out["representation"])


def test_sigma_setting_reaches_the_model_and_is_validated():
    from inference.recipes.gnm import GNMRecipe

    recipe = GNMRecipe()
    config = dict(recipe.default_config("mnist4"), seed=0)
    assert config["sigma"] is None and recipe.model_config(config).sigma == 0.2  # the preset's
    config["sigma"] = 0.1
    recipe.validate_config(config)
    assert recipe.model_config(config).sigma == 0.1
    for bad in (0, -0.5, "x", True):
        with pytest.raises(ValueError, match="sigma"):
            recipe.validate_config(dict(config, sigma=bad))
