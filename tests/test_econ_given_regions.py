"""ECON trained with ground-truth regions (generative MONet, ECON section 5.1, Figure 5).

The reference recomputes the objective by hand: every expert takes the given region r_t, the
greedy winner minimises lambda L_x + L_r on it, and the loss is
``sum_t L_x,t + beta KL(q(z_t) || N(0, I)) - gamma log Bernoulli(r_t; s_t m~_t)`` (the model's r_t
observed) plus the constants of eq. (13).
"""
import math

import pyro
import pytest
import torch
from pyro import poutine

from inference.handlers import Competition
from inference.objectives import econ_loss
from inference.decompose import regions_from_masks
from inference.recipes.econ import ECONRecipe
from test_econ import tiny as tiny_econ
from test_econ_competition import BETA, GAMMA, KnownNoise

B, T, H = 4, 3, 16


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield


def random_partition(seed=0):
    """Binary regions (B, T, 1, H, W) that partition each image: each pixel belongs to one layer."""
    gen = torch.Generator().manual_seed(seed)
    owner = torch.randint(T, (B, 1, H, H), generator=gen)
    return torch.stack([(owner == t).float() for t in range(T)], 1)


def reference(model, guide, x, regions, noises):
    K, sigma = model.num_experts, model.sigma_x
    scope = torch.ones(B, 1, H, H)
    total = torch.zeros(B)
    zs = []
    for i, t in enumerate(range(T, 0, -1)):
        r = regions[:, t - 1]
        terms = []
        for k in range(K):
            which = torch.full((B,), k)
            loc, log_var = guide.encoder(x, r, experts=which)  # q(z_t | x, r_t, k)
            std = torch.exp(0.5 * log_var)
            z = loc + std * noises[i][:, k]
            mu, shape = model.decoder(z, experts=which)
            p = (scope * shape).clamp(1e-6, 1 - 1e-6)
            log_p_r = (r * p.log() + (1 - r) * (1 - p).log()).sum((1, 2, 3))
            L_x = (r * (x - mu) ** 2).sum((1, 2, 3)) / (2 * sigma ** 2)
            L_r = (r * (r.clamp(1e-6, 1 - 1e-6).log() - p.log())
                   + (1 - r) * ((1 - r).clamp(1e-6, 1 - 1e-6).log() - (1 - p).log())).sum((1, 2, 3))
            L_z = torch.distributions.kl_divergence(torch.distributions.Normal(loc, std), torch.distributions.Normal(0.0, 1.0)).sum(-1)
            terms.append(dict(score=L_x + L_r, loss=L_x + BETA * L_z - GAMMA * log_p_r, z=z))
        k = torch.stack([e["score"] for e in terms], -1).detach().argmin(-1)
        total = total + torch.stack([terms[int(k[b])]["loss"][b] for b in range(B)])
        zs.append(torch.stack([terms[int(k[b])]["z"][b] for b in range(B)]).detach())
        scope = scope - r
    constant = T * math.log(K) + 3 * H * H * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    return zs, (total + constant).mean()


def test_given_regions_loss_equals_the_hand_objective_and_uses_exactly_the_given_regions():
    torch.manual_seed(0)
    model, guide = tiny_econ(K=2, T=T, size=H, latent=2)
    x, regions = torch.rand(B, 3, H, H), random_partition()
    gen = torch.Generator().manual_seed(3)
    noises = [torch.randn(B, 2, 2, generator=gen) for _ in range(T)]
    z_ref, loss_ref = reference(model, guide, x, regions, noises)

    with KnownNoise(noises):
        loss = econ_loss(model, guide, x, beta=BETA, gamma=GAMMA, greedy=True, regions=regions)
    assert torch.allclose(loss, loss_ref, rtol=1e-5), (loss.item(), loss_ref.item())

    with KnownNoise(noises):
        guide_trace = poutine.trace(Competition(greedy=True)(guide)).get_trace(x, regions=regions)
    assert not any(name.startswith("r_") for name in guide_trace.nodes), "given regions are no guide site"
    conditioned = pyro.condition(model, data={f"r_{t}": regions[:, t - 1] for t in range(1, T + 1)})
    model_trace = poutine.trace(poutine.replay(conditioned, trace=guide_trace)).get_trace(x)
    for i, t in enumerate(range(T, 0, -1)):
        assert torch.allclose(guide_trace.nodes[f"z_{t}"]["value"], z_ref[i], atol=1e-5), f"z_{t} is not encoded from r_{t}"
        assert model_trace.nodes[f"r_{t}"]["is_observed"]
        assert torch.equal(model_trace.nodes[f"r_{t}"]["value"], regions[:, t - 1])


def test_given_regions_are_checked():
    model, guide = tiny_econ(K=1, T=T, size=H)
    with pytest.raises(ValueError, match="regions must have shape"):
        guide(torch.rand(B, 3, H, H), regions=torch.ones(B, T + 1, 1, H, H))


def test_sprite_masks_become_layers_back_to_front():
    visible = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    visible[0, 0, :2] = True  # the back object
    visible[0, 1, 3, 3] = True  # the front object
    r = regions_from_masks(visible)
    assert r.shape == (1, 3, 1, 4, 4)
    assert torch.equal(r[0, 1, 0], visible[0, 0].float()) and torch.equal(r[0, 2, 0], visible[0, 1].float())
    assert torch.equal(r.sum(1), torch.ones(1, 1, 4, 4)), "the background is what no object covers"


def test_recipe_trains_on_the_visible_masks():
    recipe = ECONRecipe()
    config = recipe.default_config("sprites-unique")
    assert recipe.batch_keys(config) == ("image",)
    config.update(given_regions=True, num_experts=1)
    assert recipe.batch_keys(config) == ("image", "visible_masks")
    recipe.validate_config(config)
    with pytest.raises(ValueError, match="num_objects"):
        recipe.validate_config({**config, "num_layers": 5})


def test_decompose_with_given_regions_keeps_them():
    from inference.decompose import decompose

    model, guide = tiny_econ(K=2, T=T, size=H)
    regions = random_partition(1)
    out = decompose(model, guide, torch.rand(B, 3, H, H), regions=regions)
    assert torch.equal(out["regions"], regions)
    assert out["experts"].shape == (B, T) and out["masks"].shape == (B, T, 1, H, H)
