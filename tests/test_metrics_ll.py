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
from pyro import poutine

from inference.likelihood import importance_log_likelihood

MU0, S0, SIGMA = 0.5, 1.5, 0.7


def model(x):
    with pyro.plate("batch", x.shape[0]):
        z = pyro.sample("z", dist.Normal(MU0, S0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), SIGMA).to_event(1), obs=x)


def posterior(x, s0=S0, sigma=SIGMA):
    d = x.shape[-1]
    prec = 1 / s0 ** 2 + d / sigma ** 2
    mean = (MU0 / s0 ** 2 + x.sum(-1) / sigma ** 2) / prec
    return mean, prec ** -0.5


def exact_guide(x):
    mean, sd = posterior(x)
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(mean, sd))


def prior_guide(x):
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.full((x.shape[0],), MU0), S0))


def exact_log_marginal(x, s0=S0, sigma=SIGMA):
    d = x.shape[-1]
    xbar = x.mean(-1)
    ss = ((x - xbar[:, None]) ** 2).sum(-1)
    out = -d / 2 * math.log(2 * math.pi * sigma ** 2) - ss / (2 * sigma ** 2) + 0.5 * math.log(2 * math.pi * sigma ** 2 / d)
    var = sigma ** 2 / d + s0 ** 2
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


def expected_estimate_with_two_prior_particles(x, n=1601):
    """E[log (w(z1) + w(z2)) / 2] with z1, z2 ~ p(z) and w = p(x | z): the mean of the K = 2
    estimate, by quadrature on a grid over +-9 prior standard deviations (801 and 1601 points agree to 1e-12)."""
    z = torch.linspace(MU0 - 9 * S0, MU0 + 9 * S0, n, dtype=torch.float64)
    prior = dist.Normal(MU0, S0).log_prob(z).exp()
    weights = prior[:, None] * prior[None, :]
    out = []
    for xi in x.double():
        log_w = dist.Normal(z[:, None], SIGMA).log_prob(xi).sum(-1)
        pair = torch.logaddexp(log_w[:, None], log_w[None, :]) - math.log(2)
        out.append((weights * pair).sum() / weights.sum())
    return torch.stack(out)


def test_few_particles_give_the_expected_lower_bound():
    """With K = 2 prior draws the estimate is biased low (Jensen): its mean is E[log p^_2] (by
    quadrature), 1.7-4.7 nats below log p(x) here. 20,000 estimates per image pin the mean to
    ~0.05 nats, so an estimator off by a fraction of a nat fails."""
    expected = expected_estimate_with_two_prior_particles(X)
    assert (expected < exact_log_marginal(X).double() - 1.0).all()
    pyro.set_rng_seed(3)
    reps = 20_000
    est = importance_log_likelihood(model, prior_guide, X.repeat(reps, 1), num_particles=2).reshape(reps, len(X)).double()
    sem = est.std(0) / math.sqrt(reps)
    assert ((est.mean(0) - expected).abs() < 4 * sem).all(), (est.mean(0), expected, sem)


def test_rejects_bad_particles():
    with pytest.raises(ValueError):
        importance_log_likelihood(model, prior_guide, X, num_particles=0)


# --------------------------------------------------------------------------- site scales
# poutine.scale(s) on a site multiplies its log-density: the weights are those of the tempered
# model p(z)^a p(x | z)^b. For Normals, N(v; m, sd)^s = N(v; m, sd / sqrt(s)) * c(s, sd) with
# log c(s, sd) = (1 - s) / 2 log(2 pi sd^2) - 1/2 log(s), so log p_tempered(x) is exact again.
A, B = 0.5, 2.5  # the scales of z and of x


def scaled_model(x):
    with pyro.plate("batch", x.shape[0]):
        with poutine.scale(scale=A):
            z = pyro.sample("z", dist.Normal(MU0, S0))
        with poutine.scale(scale=B):
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), SIGMA).to_event(1), obs=x)


def tempered_log_marginal(x):
    def log_c(s, sd):
        return (1 - s) / 2 * math.log(2 * math.pi * sd ** 2) - 0.5 * math.log(s)

    s0, sigma = S0 / math.sqrt(A), SIGMA / math.sqrt(B)
    return (exact_log_marginal(x, s0=s0, sigma=sigma) + log_c(A, S0) + x.shape[-1] * log_c(B, SIGMA))


def tempered_posterior_guide(x):
    mean, sd = posterior(x, s0=S0 / math.sqrt(A), sigma=SIGMA / math.sqrt(B))
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("z", dist.Normal(mean, sd))


def test_tempered_normal_identity():
    v = torch.linspace(-2, 2, 5)
    for s, sd in ((A, S0), (B, SIGMA)):
        lhs = s * dist.Normal(0.3, sd).log_prob(v)
        rhs = dist.Normal(0.3, sd / math.sqrt(s)).log_prob(v) + (1 - s) / 2 * math.log(2 * math.pi * sd ** 2) - 0.5 * math.log(s)
        assert torch.allclose(lhs, rhs, atol=1e-5)


def test_site_scales_are_respected():
    """With the tempered model's exact posterior as proposal every weight is the tempered
    marginal: the estimate equals it for any K and chunking, and differs from the unscaled one."""
    pyro.set_rng_seed(2)
    for k, chunk in ((1, 1), (7, 3)):
        ll = importance_log_likelihood(scaled_model, tempered_posterior_guide, X, num_particles=k, batch_particles=chunk)
        assert torch.allclose(ll, tempered_log_marginal(X), atol=1e-4), (ll, tempered_log_marginal(X))
    assert (tempered_log_marginal(X) - exact_log_marginal(X)).abs().min() > 1.0
