"""ECON speed: SVI step time for K = 1 and K = 4, and Pyro's overhead.

    python benchmarks/bench_econ.py [--batch-size 32] [--repeats 10] [--threads 2]

Prints (1) the time of one training step (loss, backward, Adam) at batch 32 with the CPU
default networks for K = 1 and K = 4 experts (target, issue 8: K = 4 at most 1.3 x K = 1), and (2) the
Pyro overhead: the Pyro step (TraceMeanField_ELBO under Competition and ScaleSites) divided by a
hand-written PyTorch computation of the same loss with the same networks (target at most 1.10).
"""
from __future__ import annotations

import statistics
import time

import click
import pyro
import torch

from inference.objectives import econ_loss
from inference.recipes.econ import ECONRecipe
from pyro_scenes.distributions import bernoulli_kl
from pyro_scenes.econ import competition_score


def torch_loss(model, guide, x, beta, gamma):
    """Eq. (13) in plain PyTorch: the same computation as econ_loss, without Pyro."""
    B, H, T = x.shape[0], model.image_size, model.num_layers
    scope = x.new_ones(B, 1, H, H)
    total = x.new_zeros(B)
    rows = torch.arange(B)
    for t in range(T, 0, -1):
        last = t == 1
        with torch.no_grad():
            p = guide.propose(x, scope, last)
            score = competition_score(p, guide.competition_lambda, guide.competition_per_pixel)
            k = torch.distributions.Categorical(logits=-score).sample()
        region = guide.attend(x, scope, k, last)
        loc, scale = guide.encode(x, region, k)
        z = loc + scale * p["noise"][rows, k]
        mu, m = model.decoder(z, experts=k)
        L_x = (region * (x - mu) ** 2).sum((1, 2, 3)) / (2 * model.sigma_x ** 2)
        L_z = (0.5 * (loc ** 2 + scale ** 2 - 1) - torch.log(scale)).sum(-1)
        L_r = bernoulli_kl(region, scope * m).sum((1, 2, 3))
        total = total + L_x + beta * L_z + gamma * L_r
        scope = scope - region
    return total.mean()


def time_steps(steps, repeats):
    """Median time of each step function; the functions alternate so load changes hit both alike."""
    for step in steps:
        step()  # warm-up
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, ts in zip(steps, times):
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def build(num_experts, batch_size):
    recipe = ECONRecipe()
    config = recipe.default_config("sprites-unique")
    config.update(num_experts=num_experts, cache_dir="")
    model, guide = recipe.build(config, torch.device("cpu"))
    params = list(model.parameters()) + list(guide.parameters())
    opt = torch.optim.Adam(params, lr=config["lr"])
    x = torch.rand(batch_size, 3, config["image_size"], config["image_size"])
    return config, model, guide, opt, x


@click.command(help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per step.")
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=1), help="Timed steps; the median counts.")
@click.option("--threads", default=torch.get_num_threads(), show_default=True, type=click.IntRange(min=1),
              help="torch intra-op threads.")
def main(batch_size, repeats, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    print(f"ECON step time, batch {batch_size}, CPU default networks, {threads} threads, median of {repeats}")
    results = {}
    for K in (1, 4):
        config, model, guide, opt, x = build(K, batch_size)

        def pyro_step():
            opt.zero_grad()
            econ_loss(model, guide, x, config["beta"], config["gamma"]).backward()
            opt.step()

        def torch_step():
            opt.zero_grad()
            torch_loss(model, guide, x, config["beta"], config["gamma"]).backward()
            opt.step()

        results[K] = time_steps([pyro_step, torch_step], repeats)
        print(f"  K = {K}: Pyro SVI step {results[K][0]:.3f} s | hand-written PyTorch {results[K][1]:.3f} s | "
              f"Pyro overhead {results[K][0] / results[K][1]:.3f}")
    print(f"K = 4 / K = 1 step time: {results[4][0] / results[1][0]:.2f} (target <= 1.3)")
    print(f"Pyro overhead at K = 4: {results[4][0] / results[4][1]:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
