"""GNM speed: SVI step time of the authors' 128x128 MNIST configuration, and Pyro's overhead.

    python benchmarks/bench_gnm.py [--preset mnist] [--batch-size 32] [--repeats 10] [--threads 2]

Prints (1) the time of one training step (loss under all handlers, backward, gradient clipping,
RMSprop) at batch 32 with ``GNM.preset("mnist")`` (targets: <= 0.7 s; the authors' code takes
0.7-1.1 s here, docs/gnm.md "Speed"), and (2) the Pyro overhead: that Pyro step divided by the same step with
a hand-written PyTorch computation of the same loss with the same networks (target <= 1.15).
Both steps are timed interleaved (ABAB...) and the medians compared, so machine load drifts hit
both alike. A third variant, the hand-written step with the straightforward kernels a plain
implementation uses (``affine_grid``/``grid_sample`` per glimpse, NCHW decoders with the native
pixel shuffle), shows what this library's kernels save. Pyro's argument/support validation (on by default in Pyro) is switched off unless
``--validation`` is given: it is a debugging aid that costs a few percent per step.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time

import click
import pyro
import torch
import torch.nn.functional as F

from inference.recipes.gnm import GNMRecipe
from pyro_scenes.gnm import RenderOptions


def _kl_normal(qm, qs, pm, ps):
    return torch.log(ps / qs) + (qs ** 2 + (qm - pm) ** 2) / (2 * ps ** 2) - 0.5


def _kl_bern(ql, pl):
    q = torch.sigmoid(ql)
    return q * (F.logsigmoid(ql) - F.logsigmoid(pl)) + (1 - q) * (F.logsigmoid(-ql) - F.logsigmoid(-pl))


def torch_loss(model, guide, x, step, config, schedules):
    """The GNM training loss (docs/gnm.md, "Training objective") in plain PyTorch with the same networks, without Pyro."""
    cfg = model.cfg
    B = x.shape[0]
    s = {k: f(step) for k, f in schedules.items()}
    fx = guide.encoder(x)
    dec = model.draw.init_state((B,))
    enc = guide.draw_encoder.init_state((B,))
    kl_g, zg = 0.0, []
    for _ in range(cfg.draw_steps):
        p_loc, p_scale = model.draw.prior(dec[0])
        q_loc, q_scale, enc = guide.draw_encoder(fx, dec, enc)
        z = q_loc + q_scale * torch.randn_like(q_loc)
        kl_g = kl_g + _kl_normal(q_loc, q_scale, p_loc, p_scale).sum(-1)
        dec = model.draw.step(z, dec)
        zg.append(z)
    p, q = model.zs_net(dec[2]), model.zs_net(fx)
    u = torch.rand_like(q["pres_logits"]).clamp(1e-20, 1 - 1e-7)
    z_pres = torch.sigmoid((q["pres_logits"] + u.log() - (-u).log1p()) / s["tau"])
    z = {k: q[f"{k}_loc"] + q[f"{k}_scale"] * torch.randn_like(q[f"{k}_loc"]) for k in ("where", "depth", "what")}
    kl = _kl_bern(q["pres_logits"], p["pres_logits"]).sum(-1)
    for k in ("where", "depth", "what"):
        kl = kl + _kl_normal(q[f"{k}_loc"], q[f"{k}_scale"], p[f"{k}_loc"], p[f"{k}_scale"]).sum((-1, -2))
    gate = z_pres.clamp(min=config["aux_gate_min"])
    rho = torch.tensor(s["rho"])
    aux = _kl_bern(q["pres_logits"], torch.log(rho) - torch.log1p(-rho)).sum(-1)
    mean, std = torch.tensor(config["aux_where_mean"]), torch.tensor(config["aux_where_std"])
    aux = aux + s["beta_where"] * (_kl_normal(q["where_loc"], q["where_scale"], mean, std).sum(-1) * gate).sum(-1)
    for k in ("depth", "what"):
        aux = aux + (_kl_normal(q[f"{k}_loc"], q[f"{k}_scale"], 0.0, 1.0).sum(-1) * gate).sum(-1)
    z_bg = None
    if cfg.background:
        pb_loc, pb_scale = model.bg_prior(torch.cat(zg, -1))
        qb_loc, qb_scale = guide.bg_net(fx.movedim(-3, -1).flatten(-3))
        z_bg = (qb_loc + qb_scale * torch.randn_like(qb_loc)).unsqueeze(-2)
        kl = kl + _kl_normal(qb_loc, qb_scale, pb_loc, pb_scale).sum(-1)
        aux = aux + s["beta_bg"] * _kl_normal(qb_loc, qb_scale, 0.0, 1.0).sum(-1)
    active = config["curriculum"] and step < config["curriculum_steps"]
    opts = RenderOptions(alpha=config["curriculum_alpha"], pres_max=config["curriculum_pres_max"]) if active else RenderOptions()
    image = model.render(z_pres, z["where"], z["depth"], z["what"], z_bg, opts)[0]
    log_like = (-0.5 * ((x - image) / cfg.sigma) ** 2 - torch.log(torch.tensor(cfg.sigma)) - 0.9189385332046727).flatten(1).sum(1)
    return (-(log_like - s["beta_g"] * kl_g - kl - aux)).mean()


@contextlib.contextmanager
def straightforward_kernels(*modules):
    """Swap in the straightforward kernels a plain implementation (like the authors') uses:
    affine_grid + grid_sample placement of every glimpse, then a sum over cells; NCHW sub-pixel
    decoders with the native pixel shuffle. Same values; for an A/B of this library's kernels."""
    import pyro_scenes.gnm.render as render
    from pyro_scenes.nn.stn import place_grid_sample
    from pyro_scenes.nn.subpixel import SubPixelConv, SubPixelStack

    old_place, old_fwd = render.place_sum, SubPixelConv.forward
    stacks = [m for mod in modules for m in mod.modules() if isinstance(m, SubPixelStack)]
    render.place_sum = lambda g, w, size: place_grid_sample(g, w, size).sum(-4)
    SubPixelConv.forward = lambda self, x: F.pixel_shuffle(torch.nn.Conv2d.forward(self, x), self.upscale)
    for m in stacks:
        m.channels_last = False
    try:
        yield
    finally:
        render.place_sum, SubPixelConv.forward = old_place, old_fwd
        for m in stacks:
            m.channels_last = True


def build(preset: str, dataset: str, batch_size: int):
    """Recipe, config, model, guide, optimiser, clip and a batch of mostly dark images (like digit scenes)."""
    from pyro_scenes.gnm.config import PRESETS

    torch.manual_seed(0)
    pyro.clear_param_store()
    recipe = GNMRecipe()
    config = recipe.default_config(dataset)
    config.update(preset=preset, image_size=PRESETS[preset].image_size, z_what_dim=PRESETS[preset].z_what_dim, cache_dir="", seed=0)
    model, guide = recipe.build(config, torch.device("cpu"))
    opt = recipe.make_optimizer(list(model.parameters()) + list(guide.parameters()), config)
    cfg = model.cfg
    x = torch.rand(batch_size, cfg.channels, cfg.image_size, cfg.image_size).pow(8)
    return recipe, config, model, guide, opt, recipe.grad_clip_norm(config), x


def step_functions(recipe, config, model, guide, opt, clip, x, step):
    """Three training steps (loss, backward, clip, RMSprop): Pyro's, the hand-written PyTorch one,
    and that one with the straightforward kernels."""
    params = [p for group in opt.param_groups for p in group["params"]]
    schedules = recipe.schedules(config)

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    def pyro_step():
        update(recipe.loss(model, guide, x, step, config)[0])

    def torch_step():
        update(torch_loss(model, guide, x, step, config, schedules))

    def plain_step():
        with straightforward_kernels(model, guide):
            torch_step()

    return pyro_step, torch_step, plain_step


def median_times(steps, repeats):
    """Median wall and CPU seconds of each step; the steps alternate so load changes hit all alike."""
    for _ in range(2):
        for step in steps:
            step()  # warm-up
    wall, cpu = [[] for _ in steps], [[] for _ in steps]
    for _ in range(repeats):
        for step, w, c in zip(steps, wall, cpu):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            w.append(time.perf_counter() - t0)
            c.append(time.process_time() - c0)
    return [statistics.median(w) for w in wall], [statistics.median(c) for c in cpu]


@click.command(help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", default="mnist", show_default=True, help="GNM architecture preset (pyro_scenes.gnm.config.PRESETS).")
@click.option("--dataset", default="mnist4", show_default=True, help="Dataset whose recipe defaults to use.")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Images per step.")
@click.option("--repeats", default=10, show_default=True, type=int, help="Timed steps of each kind; the median counts.")
@click.option("--threads", default=2, show_default=True, type=int, help="torch intra-op threads.")
@click.option("--step", default=5_000, show_default=True, type=int, help="training step (schedules) to time")
@click.option("--validation", is_flag=True, help="keep Pyro's validation checks on (Pyro's default; off for training speed)")
def main(preset, dataset, batch_size, repeats, threads, step, validation):
    torch.set_num_threads(threads)
    pyro.enable_validation(validation)
    recipe, config, model, guide, opt, clip, x = build(preset, dataset, batch_size)
    (mp, mt, mn), (cpu_p, cpu_t, cpu_n) = median_times(step_functions(recipe, config, model, guide, opt, clip, x, step), repeats)
    n = sum(p.numel() for group in opt.param_groups for p in group["params"])
    size = model.cfg.image_size
    print(f"GNM preset {preset!r} ({n:,} parameters), batch {batch_size}, {size}x{size}, "
          f"{threads} threads, step {step}, Pyro validation {'on' if validation else 'off'}, median of {repeats}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  Pyro SVI step (loss + backward + clip + RMSprop): {mp:.3f} s/step wall, {cpu_p:.3f} s CPU   (target <= 0.7 s)")
    print(f"  hand-written PyTorch step, same loss:             {mt:.3f} s/step wall, {cpu_t:.3f} s CPU")
    print(f"  Pyro overhead: {mp / mt:.3f} (wall), {cpu_p / cpu_t:.3f} (CPU time)   (target <= 1.15)")
    print(f"  same PyTorch step with straightforward kernels (grid_sample STN, NCHW native pixel shuffle): "
          f"{mn:.3f} s/step wall, {cpu_n:.3f} s CPU = {mn / mp:.2f} x the Pyro step")
    print(f"  1-minute load average {load:.2f} on {os.cpu_count()} cores (other processes inflate wall time)")


if __name__ == "__main__":
    main()
