"""The importance-weighted log-likelihood (inference.likelihood) on a conjugate Gaussian model.

z ~ N(mu0, s0^2), x_d | z ~ N(z, sigma^2) for d = 1..D, so the exact marginal is
log p(x) = -D/2 log(2 pi sigma^2) - SS / (2 sigma^2) + 1/2 log(2 pi sigma^2 / D)
           + log N(xbar; mu0, sigma^2 / D + s0^2),   SS = sum_d (x_d - xbar)^2.
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.likelihood import importance_log_likelihood

MU0, S0, SIGMA = 0.5, 1.5, 0.7


def model(x):
    with pyro.plate("batch", x.shape[0]):
        z = pyro.sample("z", dist.Normal(MU0, S0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), SIGMA).to_event(1), obs=x)


def posterior(x):
    d = x.shape[-1]
    prec = 1 / S0 ** 2 + d / SIGMA ** 2
    mean = (MU0 / S0 ** 2 + x.sum(-1) / SIGMA ** 2) / prec
    return mean, prec ** -0.5


def exact_guide(x):
    mean, sd = posterior(x)
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(mean, sd))


def prior_guide(x):
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.full((x.shape[0],), MU0), S0))


def exact_log_marginal(x):
    d = x.shape[-1]
    xbar = x.mean(-1)
    ss = ((x - xbar[:, None]) ** 2).sum(-1)
    out = -d / 2 * math.log(2 * math.pi * SIGMA ** 2) - ss / (2 * SIGMA ** 2) + 0.5 * math.log(2 * math.pi * SIGMA ** 2 / d)
    var = SIGMA ** 2 / d + S0 ** 2
    return out - 0.5 * math.log(2 * math.pi * var) - (xbar - MU0) ** 2 / (2 * var)


X = torch.tensor([[0.3, -0.2, 1.1], [2.0, 2.5, 1.7], [-1.0, 0.0, -0.4], [0.0, 0.1, 0.2]])


def test_hand_formula_matches_multivariate_normal():
    cov = SIGMA ** 2 * torch.eye(3) + S0 ** 2 * torch.ones(3, 3)
    ref = dist.MultivariateNormal(torch.full((3,), MU0), cov).log_prob(X)
    assert torch.allclose(exact_log_marginal(X), ref, atol=1e-5)


def test_exact_posterior_proposal_gives_exact_value_for_any_k():
    pyro.set_rng_seed(0)
    for k, chunk in ((1, 1), (7, 3), (20, 20)):
        ll = importance_log_likelihood(model, exact_guide, X, num_particles=k, batch_particles=chunk)
        assert ll.shape == (4,)
        assert torch.allclose(ll, exact_log_marginal(X), atol=1e-4)


def test_prior_proposal_converges():
    pyro.set_rng_seed(1)
    ll = importance_log_likelihood(model, prior_guide, X, num_particles=20000, batch_particles=5000)
    assert torch.allclose(ll, exact_log_marginal(X), atol=0.05)
    # with few particles the estimate is a lower bound on average (Jensen)
    few = torch.stack([importance_log_likelihood(model, prior_guide, X, num_particles=2) for _ in range(200)])
    assert (few.mean(0) < exact_log_marginal(X) + 0.02).all()


def test_rejects_bad_particles():
    with pytest.raises(ValueError):
        importance_log_likelihood(model, prior_guide, X, num_particles=0)
