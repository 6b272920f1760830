"""The GNM training loss equals the authors' objective (Jiang & Ahn 2020, supplement eqs. (1)-(5); docs/gnm.md), recomputed BY HAND.

The reference below is independent of the Pyro program: it wires the same network modules by
hand (ConvLSTM gates, flattening orders, z^s heads), renders with ``affine_grid``/``grid_sample``
exactly as the authors' code does (not with the separable STN of the library), and scores with
``torch.distributions`` KLs and an explicit Normal log-density. The noise is the guide's: every
sampled value is read from the guide trace of the very call that produced the Pyro loss.
"""
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch.distributions import Bernoulli, Normal, kl_divergence

from guides import GNMGuide
from inference.recipes.gnm import GNMRecipe
from inference.training.config import TRAINER_DEFAULTS
from pyro_scenes import GNM


def recipe_config(dataset, **overrides):
    r = GNMRecipe()
    cfg = dict(TRAINER_DEFAULTS)
    cfg.update(r.default_config(dataset))
    cfg.update(model="gnm", dataset=dataset)
    cfg.update(overrides)
    return r, r.schedule_config(cfg)  # the annealing keys at their preset's values


def lin(start, end, begin, finish, step):
    if step <= begin:
        return start
    if step >= finish:
        return end
    return start + (step - begin) / (finish - begin) * (end - start)


def lstm(conv, x, h, c):
    hid = h.shape[1]
    g = conv(torch.cat([x, h], 1))
    i, f, o, gg = g[:, :hid], g[:, hid:2 * hid], g[:, 2 * hid:3 * hid], g[:, 3 * hid:]
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(c), c


def stn_inverse(img, where, H, W):
    """The authors' spatial_transform(..., inverse=True): where = (sx, sy, cx, cy)."""
    n = img.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=img.dtype)
    theta[:, 0, 0] = 1 / (where[:, 0] + 1e-15)
    theta[:, 1, 1] = 1 / (where[:, 1] + 1e-15)
    theta[:, 0, 2] = -where[:, 2] / (where[:, 0] + 1e-15)
    theta[:, 1, 2] = -where[:, 3] / (where[:, 1] + 1e-15)
    grid = F.affine_grid(theta, [n, img.shape[1], H, W], align_corners=False)
    return F.grid_sample(img, grid, align_corners=False)


def hand_loss(model, guide, x, values, step, rc):
    """-(ELBO with beta_g) + auxiliary KLs, per image averaged over the batch (docs/gnm.md, "Training objective")."""
    mc = model.cfg
    B, C, H, W = x.shape
    G, L, K = mc.grid, mc.draw_steps, mc.grid ** 2
    hid = mc.hidden
    beta_g = lin(0.0, rc["beta_g_end"], 0, rc["beta_g_steps"], step)
    rho = lin(rc["rho_start"], rc["rho_end"], 0, rc["rho_steps"], step)
    beta_where = lin(rc["aux_where_beta_start"], 1.0, 0, rc["aux_where_beta_steps"], step)
    beta_bg = lin(rc["aux_bg_beta_start"], 1.0, 0, rc["aux_bg_beta_steps"], step)
    curriculum = rc["curriculum"] and step < rc["curriculum_steps"]

    # image encoding f^x
    fx = guide.encoder.net(x)
    # StructDRAW (Algorithm 1) with the guide's z^g samples
    d = model.draw
    h = d.lstm.h_0.expand(B, -1, -1, -1)
    c = d.lstm.c_0.expand(B, -1, -1, -1)
    he = guide.draw_encoder.lstm.h_0.expand(B, -1, -1, -1)
    ce = guide.draw_encoder.lstm.c_0.expand(B, -1, -1, -1)
    f = torch.zeros(B, hid, G, G)
    kl_g = 0.0
    zg = []
    for l in range(L):
        p_mean, p_std = d.prior_net.mlp(h.permute(0, 2, 3, 1).reshape(B, -1)).chunk(2, -1)
        he, ce = lstm(guide.draw_encoder.lstm.conv, torch.cat([h, fx, fx - f], 1), he, ce)
        q_mean, q_std = guide.draw_encoder.posterior_net.mlp(he.permute(0, 2, 3, 1).reshape(B, -1)).chunk(2, -1)
        z = values[f"z_g_{l + 1}"].reshape(B, -1)
        kl_g = kl_g + kl_divergence(Normal(q_mean, F.softplus(q_std)), Normal(p_mean, F.softplus(p_std))).sum(-1)
        zg.append(z)
        dl = d.g_decoder(z).reshape(B, hid, G, G)
        h, c = lstm(d.lstm.conv, torch.cat([dl, f], 1), h, c)
        f = f + d.out_cnn(h)

    def zs_params(feat):
        zs = model.zs_net
        e = zs.body.net(feat)

        def cells(t):  # (B, k, G, G) -> (B, G*G, k)
            return t.permute(0, 2, 3, 1).reshape(B, K, -1)

        pres = torch.tanh(cells(zs.pres_head(e)).squeeze(-1)) * 8.8
        wm, ws = cells(zs.where_head(e)).chunk(2, -1)
        dm, ds = cells(zs.depth_head(e)).chunk(2, -1)
        am, as_ = cells(zs.what_head(e)).chunk(2, -1)
        return pres, (wm, F.softplus(ws)), (dm, F.softplus(ds)), (am, F.softplus(as_))

    p_pres, p_where, p_depth, p_what = zs_params(f)
    q_pres, q_where, q_depth, q_what = zs_params(fx)  # the same network on f^x
    kl_pres = kl_divergence(Bernoulli(logits=q_pres), Bernoulli(logits=p_pres)).sum(-1)
    kl_where = kl_divergence(Normal(*q_where), Normal(*p_where)).sum((-1, -2))
    kl_depth = kl_divergence(Normal(*q_depth), Normal(*p_depth)).sum((-1, -2))
    kl_what = kl_divergence(Normal(*q_what), Normal(*p_what)).sum((-1, -2))

    z_pres = values["z_pres"]
    z_where_raw = values["z_where"]
    z_depth = values["z_depth"]
    z_what = values["z_what"]
    gate = z_pres.clamp(min=rc["aux_gate_min"])
    aux_pres = kl_divergence(Bernoulli(logits=q_pres), Bernoulli(probs=torch.full_like(q_pres, rho))).sum(-1)
    aux_p_where = Normal(torch.tensor(rc["aux_where_mean"]), torch.tensor(rc["aux_where_std"]))
    aux_where = beta_where * (kl_divergence(Normal(*q_where), aux_p_where).sum(-1) * gate).sum(-1)
    aux_depth = (kl_divergence(Normal(*q_depth), Normal(0.0, 1.0)).sum(-1) * gate).sum(-1)
    aux_what = (kl_divergence(Normal(*q_what), Normal(0.0, 1.0)).sum(-1) * gate).sum(-1)

    # where transform (docs/gnm.md, "Where") and glimpses
    col = torch.arange(K) % G
    row = torch.arange(K) // G
    s = torch.sigmoid(z_where_raw[..., 0])
    r = torch.exp(z_where_raw[..., 1])
    sx, sy = s / torch.sqrt(r), s * torch.sqrt(r)
    cx = 2.0 / G * (col + 0.5 + torch.tanh(z_where_raw[..., 2])) - 1
    cy = 2.0 / G * (row + 0.5 + torch.tanh(z_where_raw[..., 3])) - 1
    where = torch.stack([sx, sy, cx, cy], -1).reshape(B * K, 4)
    glimpse = torch.sigmoid(model.glimpse_decoder.net.net(z_what.reshape(B * K, -1, 1, 1)))
    pres = z_pres.reshape(B * K, 1, 1, 1)

    kl_bg = aux_bg = torch.zeros(B)
    if not mc.alpha:  # additive rendering, authors' order: place, then multiply by z_pres
        y = (stn_inverse(glimpse, where, H, W) * pres).reshape(B, K, C, H, W).sum(1)
    else:
        o, a = glimpse[:, :C], glimpse[:, C:]
        if curriculum:
            pres = pres.clamp(max=rc["curriculum_pres_max"])
        a_hat = a * pres
        y_cells = stn_inverse(a_hat * o, where, H, W).reshape(B, K, C, H, W)
        imp = stn_inverse(a_hat * torch.sigmoid(-z_depth.reshape(B * K, 1, 1, 1)), where, H, W).reshape(B, K, 1, H, W)
        imp = imp / (imp.sum(1, keepdim=True) + 1e-15)
        fg = (y_cells * imp).sum(1)
        alpha = stn_inverse(a_hat, where, H, W).reshape(B, K, 1, H, W).sum(1)
        alpha = alpha + (alpha.clamp(1e-15, 1 - 1e-15) - alpha).detach()
        if curriculum:
            alpha = torch.full_like(alpha, rc["curriculum_alpha"])
        z_bg = values["z_bg"].reshape(B, -1)
        pb_mean, pb_std = model.bg_prior.mlp(torch.cat(zg, -1)).chunk(2, -1)
        qb_mean, qb_std = guide.bg_net.mlp(fx.permute(0, 2, 3, 1).reshape(B, -1)).chunk(2, -1)
        q_bg = Normal(qb_mean, F.softplus(qb_std))
        kl_bg = kl_divergence(q_bg, Normal(pb_mean, F.softplus(pb_std))).sum(-1)
        aux_bg = beta_bg * kl_divergence(q_bg, Normal(0.0, 1.0)).sum(-1)
        bg = torch.sigmoid(model.bg_decoder.net.net(z_bg.reshape(B, -1, 1, 1)))
        y = fg + (1 - alpha) * bg

    sigma = 0.2
    log_like = (-((x - y) ** 2) / (2 * sigma ** 2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    terms = dict(log_like=log_like, kl_g=beta_g * kl_g, kl_pres=kl_pres, kl_where=kl_where, kl_depth=kl_depth, kl_what=kl_what,
                 kl_bg=kl_bg, aux_pres=aux_pres, aux_where=aux_where, aux_depth=aux_depth, aux_what=aux_what, aux_bg=aux_bg)
    total = -(log_like - terms["kl_g"] - kl_pres - kl_where - kl_depth - kl_what - kl_bg
              - aux_pres - aux_where - aux_depth - aux_what - aux_bg)
    return total.mean(), {k: v.sum() / B for k, v in terms.items()}


def pyro_loss_and_values(recipe, model, guide, x, step, cfg):
    traced = poutine.trace(guide)
    loss, logs = recipe.loss(model, traced, x, step, cfg)
    tr = traced.trace
    values = {n: s["value"] for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    return loss, logs, values, tr


CASES = [
    ("mnist4", "tiny", 2_500),      # rho, beta_g and tau mid-schedule
    ("arrow", "arrow-tiny", 300),   # + curriculum active, beta_where and beta_bg annealing
    ("arrow", "arrow-tiny", 20_000),  # curriculum over
]


@pytest.mark.parametrize("dataset,preset,step", CASES)
def test_loss_matches_hand_computation(dataset, preset, step):
    pyro.clear_param_store()
    torch.manual_seed(0)
    recipe, cfg = recipe_config(dataset, preset=preset, image_size=32, z_what_dim=4 if preset == "tiny" else 6,
                                beta_g_steps=10_000)
    model, guide = recipe.build(cfg, torch.device("cpu"))
    x = torch.rand(3, model.cfg.channels, 32, 32)
    loss, logs, values, tr = pyro_loss_and_values(recipe, model, guide, x, step, cfg)
    ref, terms = hand_loss(model, guide, x, values, step, cfg)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=0), (float(loss), float(ref))
    # term by term: the auxiliary factor sites of the guide trace
    for name in ["pres", "where", "depth", "what"] + (["bg"] if model.cfg.background else []):
        site = tr.nodes[f"aux_kl_z_{name}"]
        got = site["fn"].log_factor.sum() / x.shape[0]
        assert torch.allclose(got, terms[f"aux_{name}"], rtol=1e-5), name
        assert abs(logs[f"aux_kl_z_{name}"] - float(terms[f"aux_{name}"].detach())) <= 1e-5 * abs(float(terms[f"aux_{name}"].detach())) + 1e-6
    # ... and the same gradients (the guide's noise carries its reparameterised graph)
    assert_same_gradients(loss, ref, list(model.parameters()) + list(guide.parameters()), rtol=1e-4, atol=1e-5)


def test_main_kl_terms_are_the_pyro_site_kls():
    """Term by term for the main KLs: TraceMeanField's per-site KLs equal the hand ones."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    recipe, cfg = recipe_config("arrow", preset="arrow-tiny", image_size=32, z_what_dim=6, beta_g_steps=10_000)
    model, guide = recipe.build(cfg, torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32)
    step = 700
    m, g, _ = recipe.handlers(model, guide, step, cfg)
    gtr = poutine.trace(g).get_trace(x)
    mtr = poutine.trace(poutine.replay(m, trace=gtr)).get_trace(x)
    values = {n: s["value"] for n, s in gtr.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    _, terms = hand_loss(model, guide, x, values, step, cfg)
    B = x.shape[0]

    def site_kl(name):
        return (kl_divergence(gtr.nodes[name]["fn"], mtr.nodes[name]["fn"]) * gtr.nodes[name]["scale"]).sum() / B

    kl_g = sum(site_kl(f"z_g_{l + 1}") for l in range(model.cfg.draw_steps))
    assert torch.allclose(kl_g, terms["kl_g"], rtol=1e-5)
    for name in ["pres", "where", "depth", "what", "bg"]:
        assert torch.allclose(site_kl(f"z_{name}"), terms[f"kl_{name}"], rtol=1e-5), name
    log_like = mtr.nodes["x"]["fn"].log_prob(mtr.nodes["x"]["value"]).sum() / B
    assert torch.allclose(log_like, terms["log_like"], rtol=1e-5)



def assert_same_gradients(loss, ref, params, rtol, atol):
    """d loss / d theta == d ref / d theta for every parameter (None counts as 0); ``atol`` is
    relative to the reference gradient's largest entry (+1)."""
    g1 = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    g2 = torch.autograd.grad(ref, params, allow_unused=True)
    for p, a, b in zip(params, g1, g2):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        assert torch.allclose(a, b, rtol=rtol, atol=atol * (1 + float(b.abs().max()))), (p.shape, float((a - b).abs().max()))

@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("dataset,preset,step", CASES)
def test_loss_and_gradients_match_in_float64(dataset, preset, step, float64):
    """The same comparison in float64, where rounding is ~1e-16 and a tolerance of 1e-9 leaves no
    room for a mis-wired term (in float32 the gradient tolerance above must absorb ~1e-5 noise)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    recipe, cfg = recipe_config(dataset, preset=preset, image_size=32, z_what_dim=4 if preset == "tiny" else 6,
                                beta_g_steps=10_000)
    model, guide = recipe.build(cfg, torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.float64
    x = torch.rand(3, model.cfg.channels, 32, 32)
    loss, logs, values, tr = pyro_loss_and_values(recipe, model, guide, x, step, cfg)
    assert loss.dtype == torch.float64
    ref, terms = hand_loss(model, guide, x, values, step, cfg)
    assert torch.allclose(loss, ref, rtol=1e-10, atol=0), (float(loss), float(ref))
    assert_same_gradients(loss, ref, list(model.parameters()) + list(guide.parameters()), rtol=1e-9, atol=1e-9)
