"""The competition of experts checked against a reference written from the paper alone.

The reference below re-derives, for every expert separately (a Python loop, per-item weights),
the competition terms of eq. (10) and (12), the winner, the sample z that was scored and the
winner's eq. (13) terms with gradients, from the networks and the noise the guide draws. It
takes nothing from the guide's trace or from ``Competition`` except what it compares: the
winners, the z values, the scores the handler used, the loss and its gradients. These checks
fail on each of three planted bugs that the older tests missed (a detached region in ``attend``, a z
drawn with fresh noise, an unweighted L_x) and on wrong competition objectives.
"""
import math

import pyro
import pytest
import torch
from pyro import poutine

from guides import ECONGuide
from inference.handlers import Competition, ScaleSites
from inference.objectives import econ_loss
from inference.recipes.econ import ECONRecipe
from inference.schedules import Geometric
from test_econ import tiny as tiny_econ

BETA, GAMMA = 2.5, 0.7


def tiny(**competition):
    torch.manual_seed(0)
    return tiny_econ(K=3, T=3, latent=2, **competition)


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    yield


def kl_bernoulli(q, p, eps=1e-6):
    q_, p_ = q.clamp(eps, 1 - eps), p.clamp(eps, 1 - eps)
    return q * (q_.log() - p_.log()) + (1 - q) * ((1 - q_).log() - (1 - p_).log())


def reference(model, guide, x, lam, noises, per_pixel=False):
    """Greedy competition and eq. (13) from the paper, expert by expert, with proposal noise
    ``noises[i]`` (B, K, L) at the i-th step (front to back). Returns winners (T, B), scores
    (T, B, K), the winners' z (T, B, L) and the loss."""
    B, K, T, L = x.shape[0], model.num_experts, model.num_layers, model.latent_dim
    H, sigma = model.image_size, model.sigma_x
    scope = torch.ones(B, 1, H, H)
    total = torch.zeros(B)
    winners, scores, zs = [], [], []
    for t in range(T, 0, -1):
        noise = noises[T - t]
        per_expert = []
        for k in range(K):
            which = torch.full((B,), k)
            region = scope if t == 1 else scope * torch.sigmoid(guide.attention(x, scope, experts=which))  # eq. (9), footnote 7
            loc, log_var = guide.encoder(x, region, experts=which)
            std = torch.exp(0.5 * log_var)
            z = loc + std * noise[:, k]
            mu, shape = model.decoder(z, experts=which)
            L_x = (region * (x - mu) ** 2).sum((1, 2, 3)) / (2 * sigma ** 2)  # eq. (10)
            L_r = kl_bernoulli(region, scope * shape).sum((1, 2, 3))  # eq. (12)
            L_z = torch.distributions.kl_divergence(torch.distributions.Normal(loc, std), torch.distributions.Normal(0.0, 1.0)).sum(-1)
            per_expert.append(dict(region=region, z=z, L_x=L_x, L_r=L_r, L_z=L_z))
        score = torch.stack([lam * e["L_x"] + e["L_r"] for e in per_expert], -1).detach()  # section 5.2
        if per_pixel:  # docs/econ.md: per pixel of each expert's region
            score = score / torch.stack([e["region"].sum((1, 2, 3)).clamp_min(1.0) for e in per_expert], -1).detach()
        k = score.argmin(-1)
        pick = lambda key: torch.stack([per_expert[int(k[b])][key][b] for b in range(B)])  # noqa: E731
        total = total + pick("L_x") + BETA * pick("L_z") + GAMMA * pick("L_r")  # eq. (13)
        winners.append(k)
        scores.append(score)
        zs.append(pick("z").detach())
        scope = scope - pick("region")  # s_{t-1} = s_t - r_t
    C = x.shape[1]
    constant = T * math.log(K) + C * H * H * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    return torch.stack(winners), torch.stack(scores), torch.stack(zs), (total + constant).mean()


class KnownNoise:
    """Feed the guide's proposal draws (``torch.randn_like``, one (B, K, L) tensor per step) from a list."""

    def __init__(self, noises):
        self.noises, self.i = noises, 0

    def __enter__(self):
        self.saved = torch.randn_like

        def randn_like(t, *args, **kwargs):
            assert t.shape == self.noises[0].shape, "the guide draws proposal noise of an unexpected shape"
            out, self.i = self.noises[self.i], self.i + 1
            return out.clone()

        torch.randn_like = randn_like
        return self

    def __exit__(self, *exc):
        torch.randn_like = self.saved


def check_against_reference(model, guide, x, lam, seed=11, per_pixel=False):
    """Assert that the library's competition, z sites, loss and gradients equal the reference
    with objective ``lam`` and ``per_pixel`` (the guide's own settings are the ones under test)."""
    params = [p for m in (model, guide) for p in m.parameters()]
    gen = torch.Generator().manual_seed(seed)
    noises = [torch.randn(x.shape[0], model.num_experts, model.latent_dim, generator=gen) for _ in range(model.num_layers)]
    win_ref, score_ref, z_ref, loss_ref = reference(model, guide, x, lam, noises, per_pixel)
    grad_ref = torch.autograd.grad(loss_ref, params, allow_unused=True)

    with KnownNoise(noises):
        trace = poutine.trace(Competition(greedy=True)(guide)).get_trace(x)
    T = model.num_layers
    for i, t in enumerate(range(T, 0, -1)):
        node = trace.nodes[f"k_{t}"]
        assert torch.allclose(node["infer"]["competition_scores"], score_ref[i], rtol=1e-4, atol=1e-3), f"scores at k_{t}"
        assert torch.equal(node["value"], win_ref[i]), f"winners at k_{t}"
        assert torch.allclose(trace.nodes[f"z_{t}"]["value"], z_ref[i], atol=1e-5), f"z_{t} is not the sample that was scored"

    elbo = pyro.infer.TraceMeanField_ELBO()
    with KnownNoise(noises), ScaleSites({"z_*": BETA, "r_*": GAMMA}):
        loss = elbo.differentiable_loss(model, Competition(greedy=True)(guide), x) / x.shape[0]
    assert torch.allclose(loss, loss_ref, rtol=1e-5), (loss.item(), loss_ref.item())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    dense = lambda gs: [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]  # noqa: E731
    grads, grad_ref = dense(grads), dense(grad_ref)
    scale = max(float(r.abs().max()) for r in grad_ref)
    for g, r in zip(grads, grad_ref):
        assert torch.allclose(g, r, rtol=1e-3, atol=1e-5 * scale), "gradient differs from eq. (13)"


@pytest.mark.parametrize("lam, per_pixel", [(1.0, False), (0.0, False), (1.0, True)])
def test_competition_loss_and_gradients_equal_the_reference(lam, per_pixel):
    model, guide = tiny(competition_lambda=lam, competition_per_pixel=per_pixel)
    x = torch.rand(4, 3, 16, 16)
    check_against_reference(model, guide, x, lam, per_pixel=per_pixel)


def test_per_pixel_changes_the_winners():
    model, guide = tiny(competition_per_pixel=False)
    x = torch.rand(4, 3, 16, 16)
    with pytest.raises(AssertionError, match="scores"):
        check_against_reference(model, guide, x, 1.0, per_pixel=True)


WRONG_OBJECTIVES = {
    "mean, not summed": lambda terms, lam, per_pixel: (lam * terms["L_x"] + terms["L_r"]) / (3 * 16 * 16),
    "gamma-weighted L_r": lambda terms, lam, per_pixel: lam * terms["L_x"] + GAMMA * terms["L_r"],
    "wrong sign": lambda terms, lam, per_pixel: -(lam * terms["L_x"] + terms["L_r"]),
}


@pytest.mark.parametrize("wrong", WRONG_OBJECTIVES)
def test_a_wrong_competition_objective_fails_the_reference(monkeypatch, wrong):
    import guides.econ as guide_module

    model, guide = tiny()
    x = torch.rand(4, 3, 16, 16)
    monkeypatch.setattr(guide_module, "competition_score", WRONG_OBJECTIVES[wrong])
    with pytest.raises(AssertionError):
        check_against_reference(model, guide, x, 1.0)


def detach_the_region(monkeypatch):
    attend = ECONGuide.attend
    monkeypatch.setattr(ECONGuide, "attend", lambda self, *a, **kw: attend(self, *a, **kw).detach())


def draw_z_with_fresh_noise(monkeypatch):
    import guides.econ as guide_module

    take = guide_module.take_expert
    monkeypatch.setattr(guide_module, "take_expert", lambda a, k, d: torch.randn(take(a, k, d).shape) if d == 1 else take(a, k, d))


def leave_L_x_unweighted(monkeypatch):
    propose = ECONGuide.propose

    def unweighted(self, x, scope, last, given=None):
        out = propose(self, x, scope, last, given)
        out["L_x"] = ((x.unsqueeze(1) - out["mu"]) ** 2).sum((-3, -2, -1)) / (2 * self.model.sigma_x ** 2)
        return out

    monkeypatch.setattr(ECONGuide, "propose", unweighted)


@pytest.mark.parametrize("plant_bug, message", [(detach_the_region, "gradient"), (draw_z_with_fresh_noise, "z_"),
                                                (leave_L_x_unweighted, "scores")])
def test_a_planted_bug_fails_the_reference(monkeypatch, plant_bug, message):
    model, guide = tiny()
    x = torch.rand(4, 3, 16, 16)
    plant_bug(monkeypatch)
    with pytest.raises(AssertionError, match=message):
        check_against_reference(model, guide, x, 1.0)


def test_temperature_divides_the_scores_of_the_draw():
    import pyro.distributions as dist

    n = 40000
    scores = torch.tensor([[100.0, 300.0, 200.0]]).expand(n, 3)

    def site():
        with pyro.plate("n", n):
            return pyro.sample("k_1", dist.Categorical(logits=torch.zeros(3)), infer={"competition_scores": scores})

    pyro.set_rng_seed(0)
    k = Competition(temperature=100.0)(site)()
    freq = torch.bincount(k, minlength=3).float() / n
    assert torch.allclose(freq, torch.softmax(-torch.tensor([1.0, 3.0, 2.0]), 0), atol=0.01)
    assert (Competition()(site)() == 0).all()  # temperature 1: exp(-100) odds, an argmin in practice
    assert (Competition(temperature=1e6, greedy=True)(site)() == 0).all()  # greedy ignores it
    with pytest.raises(ValueError, match="temperature"):
        Competition(temperature=0.0)


def test_geometric_schedule():
    g = Geometric(1000.0, 1.0, 0, 300)
    assert g(0) == pytest.approx(1000.0) and g(-5) == pytest.approx(1000.0)
    assert g(300) == pytest.approx(1.0) and g(10_000) == pytest.approx(1.0)
    assert g(100) == pytest.approx(100.0) and g(200) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        Geometric(0.0, 1.0, 0, 10)


def test_recipe_loss_takes_beta_gamma_greedy_and_temperature_from_the_config(monkeypatch):
    import inference.objectives as objectives

    recipe = ECONRecipe()
    config = recipe.default_config("sprites-unique")
    config.update(beta=1.5, gamma=0.25, lam=0.75, greedy=True, temperature=400.0, temperature_final=4.0, temperature_steps=100,
                  competition_per_pixel=True)
    seen = {}

    def spy(model, guide, x, **kwargs):
        seen.update(kwargs)
        return torch.zeros((), requires_grad=True)

    monkeypatch.setattr(objectives, "econ_loss", spy)
    _, logs = recipe.loss(None, None, torch.zeros(1), 50, config)
    assert seen == dict(beta=1.5, gamma=0.25, greedy=True, temperature=pytest.approx(40.0), regions=None)
    assert logs["temperature"] == pytest.approx(40.0)
    recipe.loss(None, None, torch.zeros(1), 500, config)
    assert seen["temperature"] == pytest.approx(4.0)


def test_the_recipe_gives_lambda_and_the_per_pixel_score_to_the_guide_alone():
    recipe = ECONRecipe()
    config = recipe.default_config("sprites-unique")
    config.update(lam=0.75, competition_per_pixel=False, image_size=16)
    _, guide = recipe.build(config, torch.device("cpu"))
    assert guide.competition_lambda == 0.75 and guide.competition_per_pixel is False


def test_recipe_loss_is_econ_loss_with_the_config():
    recipe = ECONRecipe()
    config = recipe.default_config("sprites-unique")
    config.update(beta=1.5, gamma=0.25, greedy=True)
    model, guide = tiny()
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(3)
    loss, _ = recipe.loss(model, guide, x, 0, config)
    torch.manual_seed(3)
    same = econ_loss(model, guide, x, beta=1.5, gamma=0.25, greedy=True)
    torch.manual_seed(3)
    other = econ_loss(model, guide, x, beta=3.0, gamma=0.25, greedy=True)
    assert torch.equal(loss, same) and not torch.allclose(loss, other)


def test_each_dataset_defaults_to_the_competition_measured_for_it():
    recipe = ECONRecipe()
    unique, random = recipe.default_config("sprites-unique"), recipe.default_config("sprites-random")
    assert unique["competition_per_pixel"] and unique["lam"] == 1.0  # docs/econ.md: per-pixel on unique colours
    assert not random["competition_per_pixel"] and random["lam"] == 0.0  # the paper's sums of L_r on random colours
