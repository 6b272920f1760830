"""GNM model and guide: architecture, sites, generation, rendering, Pyro tools."""
import copy
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO

from guides import GNMGuide
from pyro_scenes import GNM
from pyro_scenes.gnm import ConcreteBernoulli, GNMConfig, preset, where_from_raw
from pyro_scenes.gnm.render import RenderOptions, render_additive, render_alpha
from pyro_scenes.nn.stn import place

LATENTS = ["z_g_1", "z_g_2", "z_g_3", "z_g_4", "z_pres", "z_where", "z_depth", "z_what"]


def unique_count(*modules):
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


@pytest.fixture(autouse=True)
def _fresh():
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield
    pyro.enable_validation(False)


# ----------------------------------------------------------------------------- architecture
def test_mnist_parameter_count_is_the_authors():
    model = GNM.preset("mnist")
    guide = GNMGuide(model)
    assert unique_count(model, guide) == 2_930_708
    # the guide does not re-register the model's parameters
    assert not {id(p) for p in model.parameters()} & {id(p) for p in guide.parameters()}
    assert model.cfg.image_size == 128 and model.cfg.channels == 1 and model.cfg.glimpse_size == 32


def test_arrow_parameter_count_is_the_authors():
    model = GNM.preset("arrow")
    assert unique_count(model, GNMGuide(model)) == 8_636_446
    assert model.cfg.glimpse_size == 64 and model.cfg.background and model.cfg.alpha


def test_presets_and_options():
    assert GNM.preset("mnist", draw_steps=8).cfg.draw_steps == 8  # GNM-8
    assert GNM().cfg == preset("cpu")
    for name in ["mnist4", "mnist10", "mnist4-10"]:
        assert preset(name) == preset("mnist")
    with pytest.raises(ValueError, match="unknown GNM preset"):
        preset("nope")
    with pytest.raises(ValueError, match="enc_strides"):
        GNM(preset("cpu"), image_size=128)
    cfg = preset("arrow")
    assert GNMConfig.from_dict(cfg.to_dict()) == cfg


def test_where_head_initialisation():
    zs = GNM.preset("tiny").zs_net
    assert zs.where_head.weight.abs().max() <= 0.01
    assert zs.where_head.bias.tolist() == [-1.0] + [0.0] * 7


# ----------------------------------------------------------------------------- z_pres distribution
def test_concrete_bernoulli():
    logits = torch.tensor([-2.0, 0.0, 1.5])
    d = ConcreteBernoulli(logits, temperature=0.5)
    z = d.rsample((40_000,))
    assert ((z >= 0) & (z <= 1)).all() and ((z > 0.01) & (z < 0.99)).float().mean() > 0.2  # relaxed, not hard
    # the relaxed sample is > 1/2 exactly when the underlying Bernoulli draw is 1
    assert torch.allclose((z > 0.5).float().mean(0), torch.sigmoid(logits), atol=0.01)
    q = ConcreteBernoulli(torch.tensor([0.3, -4.0]))
    p = ConcreteBernoulli(torch.tensor([2.0, 1.0]))
    ref = torch.distributions.kl_divergence(torch.distributions.Bernoulli(logits=q.logits), torch.distributions.Bernoulli(logits=p.logits))
    assert torch.allclose(torch.distributions.kl_divergence(q, p), ref)
    assert torch.allclose(torch.distributions.kl_divergence(q, dist.Bernoulli(probs=torch.tensor(0.1))),
                          torch.distributions.kl_divergence(torch.distributions.Bernoulli(logits=q.logits), torch.distributions.Bernoulli(probs=torch.tensor(0.1))))
    hard = d.with_temperature(0.0)
    assert not hard.has_rsample and set(hard.sample((100,)).unique().tolist()) <= {0.0, 1.0}
    v = torch.tensor([1.0, 0.0, 1.0])
    assert torch.allclose(d.log_prob(v), torch.distributions.Bernoulli(logits=logits).log_prob(v))
    assert d.mode.tolist() == [0.0, 0.0, 1.0]
    logits.requires_grad_()
    ConcreteBernoulli(logits, 0.7).rsample().sum().backward()
    assert logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- sites
def test_sites_shapes_and_order():
    model = GNM.preset("arrow-tiny")
    guide = GNMGuide(model)
    x = torch.rand(3, 3, 32, 32)
    gtr = poutine.trace(guide).get_trace(x)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    msites = [n for n, s in mtr.nodes.items() if s["type"] == "sample" and n not in ("batch", "cells")]
    gsites = [n for n, s in gtr.nodes.items() if s["type"] == "sample" and n not in ("batch", "cells")]
    assert msites == LATENTS + ["z_bg", "x"]
    assert gsites == LATENTS + ["z_bg"]
    shapes = {n: tuple(mtr.nodes[n]["value"].shape) for n in msites}
    assert shapes["z_g_1"] == (3, 1, 32) and shapes["z_pres"] == (3, 16) and shapes["z_where"] == (3, 16, 4)
    assert shapes["z_depth"] == (3, 16, 1) and shapes["z_what"] == (3, 16, 6) and shapes["z_bg"] == (3, 1, 10)
    assert shapes["x"] == (3, 1, 3, 32, 32) and mtr.nodes["x"]["is_observed"]
    assert {(f.name, f.dim) for f in mtr.nodes["z_what"]["cond_indep_stack"]} == {("cells", -1), ("batch", -2)}
    assert isinstance(mtr.nodes["z_pres"]["fn"], ConcreteBernoulli)
    assert [(f.name, f.dim) for f in mtr.nodes["z_g_1"]["cond_indep_stack"]] == [("batch", -2)]
    # the model's likelihood is Normal(render, 0.2) summed over pixels
    assert (mtr.nodes["x"]["fn"].base_dist.scale == 0.2).all() and mtr.nodes["x"]["fn"].event_shape == (3, 32, 32)


def test_generation_uses_mode_zs_and_stochastic_zg():
    model = GNM.preset("arrow-tiny")
    tr = poutine.trace(model).get_trace(batch_size=4)
    for name in ["z_pres", "z_where", "z_depth", "z_what", "z_bg"]:
        fn = tr.nodes[name]["fn"]
        assert torch.equal(tr.nodes[name]["value"], fn.mode), name
    assert torch.equal(tr.nodes["z_pres"]["value"], (tr.nodes["z_pres"]["fn"].logits > 0).float())
    tr2 = poutine.trace(model).get_trace(batch_size=4)
    assert not torch.equal(tr.nodes["z_g_1"]["value"], tr2.nodes["z_g_1"]["value"])
    # the returned images are the alpha-composite of the sites over the decoded background (Algorithm 2)
    v = {n: tr.nodes[n]["value"] for n in ["z_pres", "z_where", "z_depth", "z_what", "z_bg"]}
    app, alpha = model.glimpse_decoder(v["z_what"])
    bg = model.bg_decoder(v["z_bg"].squeeze(-2))
    ref = render_alpha(app, alpha, v["z_pres"], v["z_depth"], where_from_raw(v["z_where"], 4), bg, 32)[0]
    assert torch.allclose(tr.nodes["_RETURN"]["value"], ref, atol=1e-6)
    # model(batch_size=n) is that program: the same draws give the same images
    torch.manual_seed(3)
    images = model(batch_size=4)
    torch.manual_seed(3)
    assert torch.equal(images, poutine.trace(model).get_trace(batch_size=4).nodes["_RETURN"]["value"])
    # mode=False draws z^s
    tr3 = poutine.trace(model).get_trace(batch_size=4, mode=False)
    assert not torch.equal(tr3.nodes["z_what"]["value"], tr3.nodes["z_what"]["fn"].mode)


def test_generation_returns_the_rendering_of_its_sites():
    model = GNM.preset("tiny")
    tr = poutine.trace(model).get_trace(batch_size=2)
    v = {n: tr.nodes[n]["value"] for n in ["z_pres", "z_where", "z_depth", "z_what"]}
    image = tr.nodes["_RETURN"]["value"]
    app, _ = model.glimpse_decoder(v["z_what"])
    where = where_from_raw(v["z_where"], 4)
    ref = (place(app, where, 32) * v["z_pres"][..., None, None, None]).sum(1)
    assert torch.allclose(image, ref, atol=1e-6)


# ----------------------------------------------------------------------------- rendering
def test_where_transform():
    raw = torch.zeros(16, 4)
    w = where_from_raw(raw, 4)
    assert torch.allclose(w[:, :2], torch.full((16, 2), 0.5))  # sigmoid(0), ratio 1
    assert torch.allclose(w[5, 2:], torch.tensor([-0.25, -0.25]))  # row 1, col 1 centre
    raw[6, 2] = 100.0  # tanh(shift) = 1: one cell to the right
    assert torch.allclose(where_from_raw(raw, 4)[6, 2], where_from_raw(torch.zeros(16, 4), 4)[7, 2])
    raw = torch.tensor([[0.0, 2 * torch.log(torch.tensor(2.0)), 0.0, 0.0]]).expand(16, 4)  # ratio 4
    w = where_from_raw(raw, 4)
    assert torch.allclose(w[0, :2], torch.tensor([0.25, 1.0]))


def test_alpha_rendering_composites_over_the_background():
    torch.manual_seed(0)
    K, C, g, S = 3, 3, 8, 32
    app = torch.rand(1, K, C, g, g)
    alpha = torch.ones(1, K, 1, g, g)
    pres = torch.tensor([[1.0, 0.0, 0.0]])
    depth = torch.zeros(1, K, 1)
    where = torch.tensor([[[0.25, 0.25, -0.5, -0.5], [0.25, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, -0.5]]])
    bg = torch.rand(1, C, S, S)
    x, fg, a = render_alpha(app, alpha, pres, depth, where, bg, S)
    # object 0 covers pixels [4, 12) x [4, 12) exactly: there x = its appearance, elsewhere the background
    assert torch.allclose(x[0, :, 4:12, 4:12], app[0, 0], atol=1e-6)
    mask = torch.ones(S, S, dtype=torch.bool)
    mask[4:12, 4:12] = False
    assert torch.allclose(x[0][:, mask], bg[0][:, mask], atol=1e-6)
    # depth decides overlaps: two objects on the same box, the nearer (smaller depth) dominates
    where2 = where[:, [0, 0, 0]]
    pres2 = torch.tensor([[1.0, 1.0, 0.0]])
    depth2 = torch.tensor([[[-5.0], [5.0], [0.0]]])
    x2, _, _ = render_alpha(app, alpha, pres2, depth2, where2, bg, S)
    w0 = torch.sigmoid(torch.tensor(5.0)) / (torch.sigmoid(torch.tensor(5.0)) + torch.sigmoid(torch.tensor(-5.0)))
    assert torch.allclose(x2[0, :, 4:12, 4:12], w0 * app[0, 0] + (1 - w0) * app[0, 1], atol=1e-5)
    # the curriculum override: constant alpha 0.9, z_pres clamped to 0.99
    x3, fg3, a3 = render_alpha(app, alpha, pres, depth, where, bg, S, options=RenderOptions(alpha=0.9, pres_max=0.99))
    assert torch.allclose(a3, torch.full_like(a3, 0.9)) and torch.allclose(x3, fg3 + 0.1 * bg)
    assert torch.allclose(fg3[0, :, 4:12, 4:12], 0.99 * app[0, 0], atol=1e-6)


def test_additive_rendering_is_linear():
    torch.manual_seed(0)
    app = torch.rand(2, 16, 1, 8, 8)
    pres = torch.rand(2, 16)
    where = torch.cat([torch.rand(2, 16, 2) * 0.3 + 0.1, torch.rand(2, 16, 2) * 2 - 1], -1)
    out = render_additive(app, pres, where, 32)
    ref = sum(pres[:, k, None, None, None] * place(app[:, k], where[:, k], 32) for k in range(16))
    assert torch.allclose(out, ref, atol=1e-5)


# ----------------------------------------------------------------------------- guide
def test_guide_infer():
    model = GNM.preset("tiny")
    guide = GNMGuide(model)
    x = torch.rand(2, 1, 32, 32)
    info = guide.infer(x)
    assert info["boxes"].shape == (2, 16, 4) and info["pres_prob"].shape == (2, 16) and info["z_what"].shape == (2, 16, 4)
    assert info["z_g"].shape == (2, 4, 32)
    assert ((info["pres_prob"] > 0) & (info["pres_prob"] < 1)).all()
    assert torch.equal(info["pres"], (info["pres_prob"] > 0.5).float())
    # boxes are the pixel boxes of the posterior-mean z_where, and the mode guide agrees
    tr = poutine.trace(guide).get_trace(x, mode=True)
    assert torch.allclose(tr.nodes["z_where"]["value"], info["z_where"])
    assert torch.allclose(model.boxes(info["z_where"]), info["boxes"])
    assert torch.allclose(tr.nodes["z_g_1"]["value"].squeeze(-2), info["z_g"][:, 0])
    x0, y0, x1, y1 = info["boxes"].unbind(-1)
    assert (x1 > x0).all() and (y1 > y0).all()


# ----------------------------------------------------------------------------- Pyro tools
def test_condition_makes_z_pres_observed():
    model = GNM.preset("tiny")
    v = torch.zeros(2, 16)
    v[:, 3] = 1.0
    tr = poutine.trace(pyro.condition(model, data={"z_pres": v})).get_trace(batch_size=2)
    site = tr.nodes["z_pres"]
    assert site["is_observed"] and torch.equal(site["value"], v)
    tr.compute_log_prob()
    logits = site["fn"].logits
    assert torch.allclose(site["log_prob_sum"], (v * logits - torch.nn.functional.softplus(logits)).sum())
    # only cell 3 is drawn: the image is that glimpse
    image = tr.nodes["_RETURN"]["value"]
    app, _ = model.glimpse_decoder(tr.nodes["z_what"]["value"][:, 3])
    assert torch.allclose(image, place(app, where_from_raw(tr.nodes["z_where"]["value"], 4)[:, 3], 32), atol=1e-6)


def test_do_removes_and_moves_objects():
    model = GNM.preset("tiny")
    guide = GNMGuide(model)
    x = torch.rand(1, 1, 32, 32)
    gtr = poutine.trace(guide).get_trace(x, mode=True)
    z_pres = torch.zeros(1, 16)
    z_pres[0, [2, 9]] = 1.0
    base = poutine.do(poutine.replay(model, trace=gtr), data={"z_pres": z_pres})(x)
    z_where = gtr.nodes["z_where"]["value"]
    app, _ = model.glimpse_decoder(gtr.nodes["z_what"]["value"])
    where = where_from_raw(z_where, 4)

    def drawn(k, w=where):
        return place(app[:, k], w[:, k], 32)

    assert torch.allclose(base, drawn(2) + drawn(9), atol=1e-6)
    # remove object 9
    removed_pres = z_pres.clone()
    removed_pres[0, 9] = 0.0
    removed = poutine.do(poutine.replay(model, trace=gtr), data={"z_pres": removed_pres})(x)
    assert torch.allclose(removed, drawn(2), atol=1e-6)
    # move object 2 half a cell to the right
    moved_where = z_where.clone()
    moved_where[0, 2, 2] = torch.atanh(torch.tanh(z_where[0, 2, 2]) * 0 + 0.5)
    moved = poutine.do(poutine.replay(model, trace=gtr), data={"z_pres": z_pres, "z_where": moved_where})(x)
    new_where = where_from_raw(moved_where, 4)
    assert torch.allclose(moved, drawn(2, new_where) + drawn(9), atol=1e-6)
    assert not torch.allclose(moved, base)
    # do leaves a fresh draw at the site (here the mode) and uses the intervention downstream
    tr = poutine.trace(poutine.do(model, data={"z_pres": removed_pres})).get_trace(batch_size=1)
    assert torch.equal(tr.nodes["z_pres"]["value"], tr.nodes["z_pres"]["fn"].mode)
    app2, _ = model.glimpse_decoder(tr.nodes["z_what"]["value"])
    ref = place(app2[:, 2], where_from_raw(tr.nodes["z_where"]["value"], 4)[:, 2], 32)
    assert torch.allclose(tr.nodes["_RETURN"]["value"], ref, atol=1e-6)


def test_predictive_with_guide_sequential_and_parallel():
    model = GNM.preset("arrow-tiny")
    guide = GNMGuide(model)
    x = torch.rand(2, 3, 32, 32)
    for parallel in (False, True):
        out = Predictive(model, guide=guide, num_samples=3, parallel=parallel, return_sites=LATENTS + ["z_bg", "_RETURN"])(x)
        assert out["z_what"].shape == (3, 2, 16, 6) and out["z_g_2"].shape == (3, 2, 1, 32)
        assert out["_RETURN"].shape == (3, 2, 3, 32, 32)
        # every returned image is the model's rendering of that sample's latents (broadcasting is right)
        for i in range(3):
            data = {k: out[k][i] for k in LATENTS + ["z_bg"]}
            ref = pyro.condition(model, data=data)(x)
            assert torch.allclose(out["_RETURN"][i], ref, atol=1e-5), (parallel, i)
        # samples differ across the particle dim
        assert not torch.allclose(out["z_what"][0], out["z_what"][1])


def test_predictive_generation_parallel():
    model = GNM.preset("tiny")
    z_g = [f"z_g_{l}" for l in range(1, 5)]
    out = Predictive(model, num_samples=4, parallel=True, return_sites=z_g + ["z_pres", "_RETURN"])(batch_size=2)
    assert out["z_g_1"].shape == (4, 2, 1, 32) and out["_RETURN"].shape == (4, 2, 1, 32, 32)
    assert set(out["z_pres"].unique().tolist()) <= {0.0, 1.0}
    # z^g fixes a mode generation: each parallel sample is the sequential program run on its z^g
    for i in range(4):
        tr = poutine.trace(pyro.condition(model, data={k: out[k][i] for k in z_g})).get_trace(batch_size=2)
        assert torch.equal(tr.nodes["z_pres"]["value"], out["z_pres"][i]), i
        assert torch.allclose(tr.nodes["_RETURN"]["value"], out["_RETURN"][i], atol=1e-5), i
    assert not torch.allclose(out["_RETURN"][0], out["_RETURN"][1])


def test_svi_with_validation_no_warnings_and_learns():
    pyro.enable_validation(True)
    model = GNM.preset("arrow-tiny")
    guide = GNMGuide(model)
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 0.2 + torch.linspace(0, 0.6, 32)  # a smooth learnable scene
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), TraceMeanField_ELBO(max_plate_nesting=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses = [svi.step(x) for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    # the trained parameters are the modules' own tensors (Pyro's param store holds the same objects)
    store = dict(pyro.get_param_store().named_parameters())
    assert store["gnm$$$zs_net.where_head.bias"] is model.zs_net.where_head.bias


def test_input_validation():
    model = GNM.preset("tiny")
    with pytest.raises(ValueError, match="batch_size"):
        model()
    with pytest.raises(ValueError, match="expects images of shape"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(TypeError):
        GNMGuide(torch.nn.Linear(2, 2))


def test_the_guide_passes_the_model_nothing_but_the_sites(monkeypatch):
    """No hidden state between guide and model: the model replayed on a guide trace decodes every
    z^g itself and equals the model conditioned on copies of the latent values; the guide's mode
    sets every latent."""
    from pyro_scenes.gnm.networks import StructDRAW

    model = GNM.preset("tiny")
    guide = GNMGuide(model)
    x = torch.rand(2, 1, 32, 32)
    gtr = poutine.trace(guide).get_trace(x)
    latents = {name: gtr.nodes[name]["value"].clone() for name in LATENTS}
    calls, step = [], StructDRAW.step
    monkeypatch.setattr(StructDRAW, "step", lambda self, *args: calls.append(1) or step(self, *args))
    replayed = poutine.replay(model, trace=gtr)(x)
    assert len(calls) == model.cfg.draw_steps
    assert torch.equal(replayed, pyro.condition(model, data=latents)(x))
    mode = poutine.trace(guide).get_trace(x, mode=True)
    assert all(torch.equal(mode.nodes[name]["value"], mode.nodes[name]["fn"].mode) for name in latents)
    copy.deepcopy(model)


@pytest.mark.parametrize("k,u", [(1, 2), (1, 4), (3, 2)])
def test_subpixel_conv_matches_conv_and_pixel_shuffle(k, u):
    from pyro_scenes.nn.subpixel import SubPixelConv, pixel_shuffle

    conv = SubPixelConv(5, 3, k, u).double()
    x = torch.randn(4, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=(k - 1) // 2), u)
    out = conv(x)
    assert out.shape == (4, 3, 6 * u, 7 * u) and torch.allclose(out, ref)
    y = torch.randn(2, 12, 5, 3)
    assert torch.equal(pixel_shuffle(y, 2), torch.nn.functional.pixel_shuffle(y, 2))
    g = torch.randn_like(out)
    ga = torch.autograd.grad((out * g).sum(), [x, conv.weight, conv.bias])
    gb = torch.autograd.grad((ref * g).sum(), [x, conv.weight, conv.bias])
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b)
