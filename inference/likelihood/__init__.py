"""Importance-sampled log-likelihood ``log p(x)`` of a Pyro model, with its guide as proposal.

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x)

(GNM's protocol, docs/metrics.md "Log-likelihood": log-mean-exp over K = 100 particles of log p(x | z) + sum(log p - log q) over all
latents). Particles are vectorised: model and guide run under an extra ``pyro.plate`` left of all
their plates, ``batch_particles`` particles at a time, and the chunks are combined exactly with
``logsumexp``. Works for any model/guide pair whose sites all sit in one data plate (the image
batch), so that the weights factorise per image. The command line is ``python -m
inference.likelihood`` (:mod:`inference.likelihood.__main__`).
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

