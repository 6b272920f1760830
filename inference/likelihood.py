"""Importance-sampled log-likelihood ``log p(x)`` of a Pyro model, with its guide as proposal.

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x)

(SPEC.md "LL": log-mean-exp over K = 100 particles of log p(x | z) + sum(log p - log q) over all
latents). Particles are vectorised: model and guide run under an extra ``pyro.plate`` left of all
their plates, ``batch_particles`` particles at a time, and the chunks are combined exactly with
``logsumexp``. Works for any model/guide pair whose sites all sit in one data plate (the image
batch), so that the weights factorise per image.

    python -m inference.likelihood runs/gnm-mnist4 --particles 100 --num-images 512
"""
from __future__ import annotations

import math
from typing import Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

_PARTICLE_PLATE = "_ll_particles"


def _max_plate_nesting(model, guide, args, kwargs) -> int:
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [-f.dim for tr in (model_trace, guide_trace) for site in tr.nodes.values()
            if site["type"] == "sample" for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=0)


def _per_image(site, batch_plate: str, nesting: int, k: int) -> torch.Tensor:
    """A site's ``log_prob`` (broadcastable to ``(k, *plates)``) reduced to ``(k, B)``."""
    lp = site["log_prob"]
    frame = next((f for f in site["cond_indep_stack"] if f.name == batch_plate), None)
    if frame is None:
        raise ValueError(f"importance_log_likelihood: site {site['name']!r} is outside the {batch_plate!r} plate, "
                         "so the weights do not factorise per image")
    lp = lp.reshape((1,) * (nesting + 1 - lp.dim()) + tuple(lp.shape))
    shape = list(lp.shape)
    shape[0] = k
    shape[frame.dim] = frame.size
    lp = lp.expand(shape).movedim(frame.dim, 1)
    return lp.reshape(k, frame.size, -1).sum(-1)


@torch.no_grad()
def importance_log_likelihood(model, guide, x: torch.Tensor, *args, num_particles: int = 100, batch_particles: int = 10,
                              batch_plate: str = "batch", max_plate_nesting: Optional[int] = None, **kwargs) -> torch.Tensor:
    """Importance-weighted estimate of ``log p(x)`` in nats, one value per image: ``(B,)``.

    :param model, guide: called as ``model(x, *args, **kwargs)`` / ``guide(x, *args, **kwargs)``.
    :param num_particles: K, the number of importance samples per image (100 for reported numbers).
    :param batch_particles: how many particles are drawn in parallel (memory vs speed).
    :param batch_plate: name of the model's data plate (one entry per image).
    :param max_plate_nesting: the models' plate depth (guessed from one trace if None).

    Handlers wrapped around this call (e.g. a temperature for relaxed sites) apply to both
    programs. Scales set inside model or guide (``poutine.scale``) are respected as in an ELBO.
    """
    if num_particles < 1 or batch_particles < 1:
        raise ValueError("num_particles and batch_particles must be >= 1")
    args = (x,) + tuple(args)
    nesting = _max_plate_nesting(model, guide, args, kwargs) if max_plate_nesting is None else int(max_plate_nesting)
    chunks = []
    done = 0
    while done < num_particles:
        k = min(batch_particles, num_particles - done)
        plate = pyro.plate(_PARTICLE_PLATE, k, dim=-(nesting + 1))
        guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(*args, **kwargs)
        guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        log_w = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + _per_image(site, batch_plate, nesting, k)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"]:
                if name not in model_trace.nodes:
                    raise ValueError(f"importance_log_likelihood: guide site {name!r} is not in the model")
                log_w = log_w - _per_image(site, batch_plate, nesting, k)
        chunks.append(log_w)
        done += k
    log_w = torch.cat(chunks, 0)
    return torch.logsumexp(log_w, 0) - math.log(num_particles)


def main(argv=None) -> None:
    """CLI: the log-likelihood of a trained run on held-out images."""
    import argparse

    from torch.utils.data import DataLoader

    from inference.training import restore

    p = argparse.ArgumentParser(prog="python -m inference.likelihood", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--batch-particles", type=int, default=10)
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    recipe, config, model, guide, step = restore(a.run, device=a.device)
    model.eval(), guide.eval()
    data = recipe.make_dataset(config, a.split)
    n = min(a.num_images, len(data))
    loader = DataLoader(torch.utils.data.Subset(data, range(n)), batch_size=a.batch_size)
    fn = getattr(recipe, "log_likelihood", None)
    values = []
    for batch in loader:
        images = (batch["image"] if isinstance(batch, dict) else batch).to(a.device)
        if fn is not None:
            values.append(fn(model, guide, images, config, num_particles=a.particles, batch_particles=a.batch_particles))
        else:
            values.append(importance_log_likelihood(model, guide, images, num_particles=a.particles, batch_particles=a.batch_particles))
    ll = torch.cat(values)
    sem = ll.std() / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")
    print(f"{config['model']} {config['dataset']} step {step}: log p(x) = {ll.mean():.2f} +- {float(sem):.2f} nats/image "
          f"({len(ll)} {a.split} images, K = {a.particles})")


if __name__ == "__main__":
    main()
