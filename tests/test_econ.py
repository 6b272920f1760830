"""ECON: distributions, batched experts, model/guide as Pyro programs, competition, eq. (13)."""
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO

from guides import ECONGuide
from inference.decompose import decompose
from inference.handlers import Competition
from inference.objectives import econ_loss
from pyro_scenes import ECON
from pyro_scenes.distributions import LayeredNormal, RegionBernoulli, RegionMean, bernoulli_kl
from pyro_scenes.nn.experts import ExpertConv2d, ExpertLinear


def tiny(K=4, T=3, size=16, latent=3, **competition):
    model = ECON(num_experts=K, num_layers=T, latent_dim=latent, image_size=size, decoder_features=8, decoder_layers=2, sigma_x=0.1)
    guide = ECONGuide(model, attention_filters=8, attention_blocks=3, encoder_features=8, encoder_layers=2, **competition)
    return model, guide


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.enable_validation(False)


# ---------------------------------------------------------------- batched experts

def test_expert_conv_matches_a_loop_over_experts():
    torch.manual_seed(0)
    K, N = 3, 5
    conv = ExpertConv2d(K, 4, 6, 3, padding=1)
    x = torch.randn(N, K, 4, 8, 8)
    looped = torch.stack([F.conv2d(x[:, k], conv.weight[k], conv.bias[k], padding=1) for k in range(K)], 1)
    assert torch.allclose(conv(x), looped, atol=1e-5)
    shared = torch.randn(N, 4, 8, 8)
    assert torch.allclose(conv(shared)[:, 2], F.conv2d(shared, conv.weight[2], conv.bias[2], padding=1), atol=1e-5)
    k = torch.tensor([2, 0, 1, 1, 2])
    per_item = torch.stack([F.conv2d(shared[n : n + 1], conv.weight[k[n]], conv.bias[k[n]], padding=1)[0] for n in range(N)])
    assert torch.allclose(conv(shared, experts=k), per_item, atol=1e-5)


def test_expert_linear_matches_a_loop_over_experts():
    torch.manual_seed(0)
    lin = ExpertLinear(3, 7, 2)
    x = torch.randn(5, 3, 7)
    for k in range(3):
        assert torch.allclose(lin(x)[:, k], F.linear(x[:, k], lin.weight[k], lin.bias[k]), atol=1e-6)
    k = torch.tensor([2, 0, 1, 1, 2])
    assert torch.allclose(lin(x[:, 0], experts=k), torch.stack([F.linear(x[n, 0], lin.weight[k[n]], lin.bias[k[n]]) for n in range(5)]), atol=1e-6)


def test_decoder_select_equals_all_experts_path():
    model, _ = tiny()
    z = torch.randn(6, model.num_experts, model.latent_dim)
    mu_all, m_all = model.decoder(z)
    k = torch.tensor([0, 1, 2, 3, 3, 1])
    mu, m = model.decoder(z[torch.arange(6), k], experts=k)
    assert torch.allclose(mu, mu_all[torch.arange(6), k], atol=1e-5)
    assert torch.allclose(m, m_all[torch.arange(6), k], atol=1e-5)


# ---------------------------------------------------------------- distributions

def test_region_mean_log_ratio_is_the_bernoulli_kl():
    torch.manual_seed(0)
    q = torch.rand(50)
    p = torch.rand(50)
    mc = RegionMean(q).log_prob(RegionMean(q).rsample()) - RegionBernoulli(p).log_prob(q)
    exact = torch.distributions.kl_divergence(torch.distributions.Bernoulli(q), torch.distributions.Bernoulli(p))
    assert torch.allclose(mc, exact, atol=1e-5)
    assert torch.allclose(torch.distributions.kl_divergence(RegionMean(q), RegionBernoulli(p)), exact, atol=1e-5)


def test_region_kl_is_finite_outside_the_scope():
    q = torch.tensor([0.0, 0.0, 0.3], requires_grad=True)
    p = torch.tensor([0.0, 0.5, 0.0], requires_grad=True)
    kl = bernoulli_kl(q, p)
    assert kl[0] == 0 and torch.isfinite(kl).all()
    kl.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all()


def test_layered_normal_is_eq6_on_binary_partitions():
    torch.manual_seed(0)
    T, C, H = 3, 3, 5
    labels = torch.randint(0, T, (H, H))
    regions = F.one_hot(labels, T).permute(2, 0, 1).unsqueeze(1).float()  # (T,1,H,W)
    means = torch.rand(T, C, H, H)
    x = torch.rand(C, H, H)
    composite = (regions * means).sum(0)
    expected = dist.Normal(composite, 0.2).log_prob(x)
    assert torch.allclose(LayeredNormal(means, regions, 0.2).log_prob(x), expected, atol=1e-5)
    # uncovered pixels show the empty canvas (mean 0)
    regions[:, :, 0, 0] = 0
    expected = dist.Normal((regions * means).sum(0), 0.2).log_prob(x)
    assert torch.allclose(LayeredNormal(means, regions, 0.2).log_prob(x), expected, atol=1e-5)


# ---------------------------------------------------------------- model as a Pyro program

def test_site_names_and_shapes():
    model, guide = tiny(T=3)
    tr = poutine.trace(model).get_trace(batch_size=2)
    names = [n for n, s in tr.nodes.items() if s["type"] == "sample" and n != "batch"]
    assert names == ["k_3", "z_3", "r_3", "k_2", "z_2", "r_2", "k_1", "z_1", "r_1", "x"]
    assert tr.nodes["z_1"]["value"].shape == (2, 3)
    assert tr.nodes["r_1"]["value"].shape == (2, 1, 16, 16)
    gtr = poutine.trace(Competition()(guide)).get_trace(torch.rand(2, 3, 16, 16))
    assert [n for n, s in gtr.nodes.items() if s["type"] == "sample" and n != "batch"] == names[:-1]


def test_generation_regions_partition_image_by_eq_1_and_2():
    model, _ = tiny(T=4)
    tr = poutine.trace(model).get_trace(batch_size=5)
    regions = torch.stack([tr.nodes[f"r_{t}"]["value"] for t in range(1, 5)])
    assert set(regions.unique().tolist()) <= {0.0, 1.0}
    assert (regions.sum(0) <= 1).all()  # visible regions never overlap
    # a front region r_T is never occluded: r_t = s_t * m_t with s_t = 1 - sum_{t'>t} r_t'
    scope = torch.ones_like(regions[0])
    for t in range(3, -1, -1):
        assert ((regions[t] == 1) <= (scope == 1)).all()
        scope = scope - regions[t]


def test_do_composes_chosen_experts_and_more_layers():
    model, _ = tiny(T=3)
    choice = {"k_1": torch.tensor(3), "k_2": torch.tensor(1), "k_3": torch.tensor(1), "k_4": torch.tensor(0), "k_5": torch.tensor(2)}
    scene = poutine.do(model, data=choice)
    tr = poutine.trace(scene).get_trace(batch_size=4, num_layers=5)
    # each layer is drawn by the intervened expert inside the scope the front layers left:
    # r_t ~ Bernoulli(s_t * m~_{k_t}(z_t)), s_5 = 1, s_{t-1} = s_t - r_t (eq. 1, 2 and 7)
    scope = torch.ones(4, 1, 16, 16)
    composite = torch.zeros(4, 3, 16, 16)
    for t in range(5, 0, -1):
        z = tr.nodes[f"z_{t}"]["value"]
        mu, shape = model.decoder(z, experts=choice[f"k_{t}"].expand(4))
        assert torch.allclose(tr.nodes[f"r_{t}"]["fn"].base_dist.probs, scope * shape, atol=1e-6), t
        r = tr.nodes[f"r_{t}"]["value"]
        composite = composite + r * mu
        scope = scope - r
    # the returned image is the noise-free composite sum_t r_t mu_t of these layers (eq. 6)
    assert torch.allclose(tr.nodes["_RETURN"]["value"], composite, atol=1e-6)
    x_fn = tr.nodes["x"]["fn"].base_dist
    assert torch.allclose((x_fn.regions * x_fn.means).sum(-4), composite, atol=1e-6)


def test_condition_makes_k_observed_and_scored():
    model, _ = tiny()
    cond = pyro.condition(model, data={"k_2": torch.tensor([1, 1])})
    tr = poutine.trace(cond).get_trace(batch_size=2)
    assert tr.nodes["k_2"]["is_observed"]
    assert (tr.nodes["k_2"]["value"] == 1).all()
    tr.compute_log_prob()
    assert torch.allclose(tr.nodes["k_2"]["log_prob"], torch.full((2,), -math.log(4)))


def test_predictive_prior_parallel_and_posterior():
    torch.manual_seed(0)
    model, guide = tiny()
    prior = Predictive(model, num_samples=3, parallel=True)(batch_size=2)
    assert prior["z_1"].shape == (3, 2, 3) and prior["x"].shape == (3, 2, 3, 16, 16)
    # each parallel sample is a scene of the model: x = sum_t r_t mu_{k_t}(z_t) + N(0, sigma_x) noise
    composite = 0.0
    for t in (1, 2, 3):
        mu, _ = model.decoder(prior[f"z_{t}"], experts=prior[f"k_{t}"])
        composite = composite + prior[f"r_{t}"] * mu
    noise = (prior["x"] - composite) / model.sigma_x
    noise = noise.detach()
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1.0) < 0.05  # 4608 draws: sd of the estimates ~0.015
    assert not torch.equal(prior["z_1"][0], prior["z_1"][1])  # the samples are distinct draws
    post = Predictive(model, guide=guide, num_samples=2)(torch.rand(2, 3, 16, 16))
    assert post["r_1"].shape == (2, 2, 1, 16, 16)
    # the guide's regions partition the image (eq. 14): the back layer takes the scope left over
    total = post["r_1"] + post["r_2"] + post["r_3"]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def _elbo_sample(model, guide, x):
    """-(log p(x, z) - log q(z | x)) of one joint draw, from the traces."""
    gtr = poutine.trace(guide).get_trace(x)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x)
    return -(mtr.log_prob_sum() - gtr.log_prob_sum()).detach()


def test_svi_with_validation_runs_without_warnings():
    model, guide = tiny()
    x = torch.rand(3, 3, 16, 16)
    # the values SVI will report: its first loss is computed before the update, on the same draws
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyro.set_rng_seed(5)
        expected = float(econ_loss(model, guide, x, beta=1.0, gamma=1.0).detach()) * 3  # eq. (13) + constants, summed over the batch
        svi = SVI(model, Competition()(guide), pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
        pyro.set_rng_seed(5)
        first = svi.step(x)
        pyro.set_rng_seed(6)
        expected_plain = float(_elbo_sample(model, guide, x))
        svi_plain = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())  # stochastic competition as q(k)
        pyro.set_rng_seed(6)
        plain = svi_plain.step(x)
        # the steps changed the parameters: the same draws now give another loss
        pyro.set_rng_seed(5)
        after = float(econ_loss(model, guide, x, beta=1.0, gamma=1.0).detach()) * 3
    assert first == pytest.approx(expected, rel=1e-5)
    assert plain == pytest.approx(expected_plain, rel=1e-5)
    assert after != pytest.approx(expected, rel=1e-5)


def test_bad_input_is_rejected():
    model, guide = tiny()
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(torch.rand(2, 3, 16, 16) * 3)
    with pytest.raises(ValueError, match="batch_size"):
        model()
    with pytest.raises(ValueError, match="num_experts"):
        ECON(num_experts=0)
    with pytest.raises(TypeError):
        ECONGuide(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- competition

def test_competition_samples_exp_minus_score_and_greedy_takes_argmin():
    score = torch.tensor([2.5, 4.0, 3.0])

    def site():
        with pyro.plate("n", 40000):
            return pyro.sample("k_1", dist.Categorical(logits=torch.zeros(3)), infer={"competition_scores": score.expand(40000, 3)})

    k = Competition()(site)()
    freq = torch.bincount(k, minlength=3).float() / 40000
    assert torch.allclose(freq, torch.softmax(-score, 0), atol=0.01)
    assert (Competition(greedy=True)(site)() == 0).all()
    tr = poutine.trace(Competition()(site)).get_trace()
    tr.compute_log_prob()
    assert (tr.nodes["k_1"]["log_prob"] == 0).all()  # point mass: no log q(k) term


@pytest.mark.parametrize("lam, per_pixel", [(2.0, False), (0.0, False), (2.0, True)])
def test_the_guide_scores_lambda_L_x_plus_L_r_and_is_its_own_q_of_k(lam, per_pixel):
    torch.manual_seed(0)
    model, guide = tiny(T=2, competition_lambda=lam, competition_per_pixel=per_pixel)
    x = torch.rand(3, 3, 16, 16)
    propose = guide.propose
    seen = []
    guide.propose = lambda *a: seen.append(propose(*a)) or seen[-1]
    tr = poutine.trace(guide).get_trace(x)
    p = seen[0]  # the front layer's proposals
    score = lam * p["L_x"] + p["L_r"]
    score = score / p["area"].clamp_min(1.0) if per_pixel else score
    assert torch.allclose(tr.nodes["k_2"]["infer"]["competition_scores"], score)
    assert torch.allclose(tr.nodes["k_2"]["fn"].probs, torch.softmax(-score, -1))
    with pytest.raises(ValueError, match="competition_lambda"):
        tiny(competition_lambda=-1.0)


def _hand_eq13(model, guide, x, trace, beta, gamma):
    """Eq. (13) recomputed step by step from the networks, the trace's winners and noise."""
    B, K, T = x.shape[0], model.num_experts, model.num_layers
    sigma = model.sigma_x
    rows = torch.arange(B)
    scope = torch.ones(B, 1, x.shape[-1], x.shape[-1])
    total = torch.zeros(B)
    for t in range(T, 0, -1):
        k = trace.nodes[f"k_{t}"]["value"]
        if t > 1:
            alpha = torch.sigmoid(guide.attention(x, scope))[rows, k]
            region = scope * alpha
        else:
            region = scope
        loc, log_var = guide.encoder(x, region.unsqueeze(1).expand(B, K, *region.shape[1:]))
        loc, std = loc[rows, k], torch.exp(0.5 * log_var[rows, k])
        eps = trace.nodes[f"z_{t}"]["fn"].base_dist.noise
        z = loc + std * eps
        mu, m = model.decoder(z, experts=k)
        L_x = (region * (x - mu) ** 2).sum((1, 2, 3)) / (2 * sigma ** 2)
        L_z = torch.distributions.kl_divergence(torch.distributions.Normal(loc, std), torch.distributions.Normal(0.0, 1.0)).sum(-1)
        q, p = region.clamp(1e-6, 1 - 1e-6), (scope * m).clamp(1e-6, 1 - 1e-6)
        L_r = (region * (q.log() - p.log()) + (1 - region) * ((1 - q).log() - (1 - p).log())).sum((1, 2, 3))
        total = total + L_x + beta * L_z + gamma * L_r
        scope = scope - region
    C, H, W = x.shape[1:]
    constant = T * math.log(K) + C * H * W * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    return (total + constant).mean()


@pytest.mark.parametrize("lam", [1.3, 0.0])
def test_loss_equals_eq13_by_hand(lam):
    torch.manual_seed(0)
    model, guide = tiny(K=4, T=3, competition_lambda=lam)
    x = torch.rand(5, 3, 16, 16)
    beta, gamma = 2.5, 0.7
    pyro.set_rng_seed(123)
    loss = econ_loss(model, guide, x, beta=beta, gamma=gamma)
    pyro.set_rng_seed(123)  # same noise and winners as inside the loss
    trace = poutine.trace(Competition()(guide)).get_trace(x)
    with torch.no_grad():
        expected = _hand_eq13(model, guide, x, trace, beta, gamma)
    assert torch.allclose(loss.detach(), expected, rtol=1e-5), (loss.item(), expected.item())


def test_losing_experts_get_exactly_zero_gradient():
    torch.manual_seed(1)
    model, guide = tiny(K=4, T=2)
    x = torch.rand(1, 3, 16, 16)
    pyro.set_rng_seed(7)
    loss = econ_loss(model, guide, x, beta=1.0, gamma=1.0)
    pyro.set_rng_seed(7)
    trace = poutine.trace(Competition()(guide)).get_trace(x)
    winners = {int(trace.nodes[f"k_{t}"]["value"]) for t in (1, 2)}
    losers = sorted(set(range(4)) - winners)
    assert losers
    loss.backward()
    stacked = [p for p in list(model.parameters()) + list(guide.parameters()) if p.dim() >= 2 and p.shape[0] == 4]
    assert stacked
    for p in stacked:
        g = torch.zeros_like(p) if p.grad is None else p.grad
        for e in losers:
            assert torch.equal(g[e], torch.zeros_like(g[e]))
    winner_grad = sum(float(p.grad[e].abs().sum()) for p in stacked if p.grad is not None for e in winners)
    assert winner_grad > 0


def test_decompose_returns_a_partition_and_consistent_scopes():
    model, guide = tiny(T=3)
    x = torch.rand(2, 3, 16, 16)
    out = decompose(model, guide, x)
    assert out["experts"].shape == (2, 3)
    assert torch.allclose(out["regions"].sum(1), torch.ones(2, 1, 16, 16), atol=1e-5)
    assert torch.allclose(out["scopes"][:, -1], torch.ones(2, 1, 16, 16))
    assert torch.allclose(out["scopes"][:, 0], out["regions"][:, 0], atol=1e-5)  # last step: region = scope
    assert out["appearance"].shape == (2, 3, 3, 16, 16)
