"""The GPU check (issue 13): every model on CUDA, against the CPU, at the authors' sizes.

    python benchmarks/gpu_check.py [--steps 20] [--batch-size 32] [--case gnm-mnist] [--no-tf32]

For each case (a recipe at the sizes its paper's authors trained: ECON with appendix C's networks
on 64x64 sprites, GNM with the authors' 128x128 MNIST and Arrow presets):

1. **Loss at step 0, CPU against CUDA.** One batch of validation scenes, the same initial
   parameters (built on the CPU, copied to the GPU), and the same latent draws: the CPU loss is
   computed while the guide's draws are recorded, and the CUDA loss replays them (the GPU's random
   numbers differ from the CPU's, so without the replay the two losses would differ by Monte Carlo
   noise). The CPU loss replayed on the CPU must give the CPU loss again (``replay`` column), else
   some randomness escaped the replay and the comparison means nothing.
2. **SVI steps on CUDA** as the trainer takes them (loss, backward, gradient clipping, optimiser),
   Pyro's validation on as in the trainer: every loss and parameter finite.
3. **Speed and memory**: steps per second over ``--steps`` steps after ``--warmup`` steps
   (synchronised, the loss read back every step as the trainer does) and the peak memory
   (``torch.cuda.max_memory_allocated``).
4. **bf16**: the step-0 loss and ``--bf16-steps`` SVI steps under ``torch.autocast(bfloat16)``: is
   the loss finite, and how far is it from the CPU loss. Informative: it does not fail the check.

Prints a markdown table. Exit status 0 when every case passed 1-2, 1 when one failed, 2 when
CUDA is not available (nothing is run). Takes about a minute on one H200 (well under 5 minutes),
most of it the CPU reference at the authors' sizes.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: relative tolerance of the CUDA step-0 loss against the CPU one. With TF32 (PyTorch's default for
#: cuDNN convolutions, so what training gets): TF32 keeps 10 mantissa bits (unit roundoff
#: 2^-11 ~ 4.9e-4), so every convolution output differs from the CPU's by up to ~1e-3 relative;
#: the loss is a sum of per-pixel and per-latent terms made of such outputs, whose errors partly
#: cancel, so it moves by at most that order. 1e-2 leaves a 10x margin, while a device bug (a
#: wrong kernel, indexing or uninitialised memory) moves the loss by O(1) or makes it non-finite.
RTOL_TF32 = 1e-2
#: the same without TF32 (``--no-tf32``): full float32 everywhere, only the summation order differs
#: (~1e-6 relative for sums of 1e4-1e5 terms); 1e-4 leaves a 100x margin.
RTOL_FP32 = 1e-4
#: the CPU loss recomputed on the CPU with the recorded draws replayed: the same operations on the
#: same numbers, so equal up to reassociation within the threads
RTOL_REPLAY = 1e-5


@dataclass
class Case:
    """One model at one size: ``recipe`` on ``dataset`` with ``overrides`` of its run defaults."""

    name: str
    recipe: str
    dataset: str
    overrides: Dict = field(default_factory=dict)
    note: str = ""


def authors_cases() -> List[Case]:
    """ECON with appendix C.4's networks (``inference.recipes.econ``: 64x64, 32 features, the
    dataset's layer count, a 4-block attention U-Net); GNM with the authors' presets (128x128);
    the VAE, ConvDRAW and GENESIS at the GNM supplement's sizes (their ``paper`` presets)."""
    from inference.recipes.econ import PAPER_SETTINGS
    from pyro_scenes.gnm.config import PRESETS

    econ = PAPER_SETTINGS["sprites-unique"]
    cases = [Case("econ-paper", "econ", "sprites-unique",
                  dict(image_size=64, decoder_features=econ["features"], encoder_features=econ["features"],
                       attention_filters=econ["features"], attention_blocks=4, decoder_layers=econ["layers"],
                       encoder_layers=econ["layers"]), "appendix C networks, 64x64")]
    for preset, dataset in (("mnist", "mnist4"), ("arrow", "arrow")):
        cases.append(Case(f"gnm-{preset}", "gnm", dataset,
                          dict(preset=preset, image_size=PRESETS[preset].image_size, z_what_dim=PRESETS[preset].z_what_dim),
                          f"authors' {preset} preset, {PRESETS[preset].image_size}x{PRESETS[preset].image_size}"))
    for baseline in ("vae", "convdraw", "genesis"):  # GNM's baselines at supplement Table 3's sizes (docs/baselines.md)
        cases.append(Case(f"{baseline}-paper", baseline, "mnist4", dict(preset="paper", image_size=128), "paper preset, 128x128"))
    return cases


def all_cases() -> List[Case]:
    """:func:`authors_cases`, and each other registered recipe at its run defaults."""
    from inference.recipes import RECIPES, get_recipe

    cases = authors_cases()
    covered = {c.recipe for c in cases}
    for name in RECIPES:
        if name not in covered:
            cases.append(Case(f"{name}-defaults", name, get_recipe(name).datasets[0], {}, "run defaults"))
    return cases


# ---------------------------------------------------------------------------------------- replay
def replay_draws(trace, device):
    """A messenger giving each sample site the value it took in ``trace`` (moved to ``device``).

    A site that was a point mass at the competition's winner (ECON's ``k_t``, a
    :class:`~inference.handlers.competition.Winner`) gets that point mass back, as
    :class:`~inference.handlers.competition.Competition` only draws where no value is set yet.
    """
    from pyro.poutine.messenger import Messenger
    from pyro.poutine.util import site_is_subsample

    from inference.handlers.competition import Winner

    class ReplayDraws(Messenger):
        def _pyro_sample(self, msg):
            site = trace.nodes.get(msg["name"])
            if site is None or site["type"] != "sample" or msg["is_observed"] or site_is_subsample(site):
                return
            msg["value"] = site["value"].detach().to(device)
            msg["done"] = True
            if isinstance(site["fn"], Winner):
                msg["fn"] = Winner(msg["value"], site["fn"].num_experts)

    return ReplayDraws()


@contextlib.contextmanager
def wrapped_forward(module: torch.nn.Module, handler):
    """Within the block ``module(...)`` runs ``handler(module.forward)`` (a Pyro handler)."""
    module.forward = handler(type(module).forward.__get__(module))
    try:
        yield module.forward
    finally:
        del module.forward


# ---------------------------------------------------------------------------------------- one case
def unique_parameters(*modules) -> List[torch.nn.Parameter]:
    return list({id(p): p for m in modules for p in m.parameters()}.values())


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


class CaseCheck:
    """The checks of one :class:`Case` on ``device``; :meth:`run` fills :attr:`row`."""

    def __init__(self, case: Case, device: torch.device, batch_size: int, seed: int = 0):
        from inference.evaluation.data import scenes
        from inference.recipes import get_recipe
        from inference.recipes.settings import run_defaults

        self.case, self.device, self.seed = case, device, seed
        self.recipe = get_recipe(case.recipe)
        config = run_defaults(self.recipe, case.dataset)
        config.update(model=case.recipe, dataset=case.dataset, batch_size=batch_size, seed=seed, **case.overrides)
        if "cache_dir" in config:
            config["cache_dir"] = None  # no dataset files on the GPU machine
        self.recipe.validate_config(config)
        self.config = config
        data = self.recipe.make_dataset(config, "val")
        self.images = scenes(data, 0, min(batch_size, len(data)))["image"].float()
        self.row: Dict = dict(case=case.name, note=case.note)

    def build(self, device):
        """Model and guide on ``device`` with the CPU-built initial parameters (:attr:`state`)."""
        import pyro

        from inference.training.rng import seed_all

        pyro.clear_param_store()
        seed_all(self.seed)
        model, guide = self.recipe.build(self.config, device)
        if hasattr(self, "state"):
            model.load_state_dict(self.state[0])
            guide.load_state_dict(self.state[1])
        return model, guide

    def loss(self, model, guide, images, step: int = 0) -> torch.Tensor:
        return self.recipe.loss(model, guide, images, step, self.config)[0]

    def cpu_reference(self) -> None:
        """The CPU loss at step 0 with the guide's draws recorded, and the same loss replayed."""
        from pyro import poutine

        model, guide = self.build(torch.device("cpu"))
        self.state = (model.state_dict(), guide.state_dict())
        self.row["parameters"] = sum(p.numel() for p in unique_parameters(model, guide))
        with torch.no_grad():
            with wrapped_forward(guide, poutine.trace) as recorder:
                self.cpu_loss = float(self.loss(model, guide, self.images))
            self.draws = recorder.trace
            with wrapped_forward(guide, replay_draws(self.draws, torch.device("cpu"))):
                replayed = float(self.loss(model, guide, self.images))
        self.row.update(cpu_loss=self.cpu_loss, replay=relative(replayed, self.cpu_loss))

    def replayed_loss(self, model, guide, autocast: bool = False) -> float:
        """The step-0 loss on :attr:`device` with the CPU's draws."""
        with torch.no_grad(), self.autocast(autocast), wrapped_forward(guide, replay_draws(self.draws, self.device)):
            return float(self.loss(model, guide, self.images.to(self.device)))

    def autocast(self, on: bool):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()

    def stepper(self, model, guide, autocast: bool = False):
        """``take(steps, start)``: SVI steps as the trainer takes them (loss, backward, clipping,
        optimiser), returning ``{"losses", "finite", "seconds"}``; it stops at a non-finite loss."""
        params = unique_parameters(model, guide)
        optimizer = self.recipe.make_optimizer(params, self.config)
        clip = self.recipe.grad_clip_norm(self.config)
        images = self.images.to(self.device)

        def take(steps: int, start: int = 0) -> Dict:
            losses = []
            self.synchronize()
            t0 = time.perf_counter()
            for step in range(start, start + steps):
                optimizer.zero_grad(set_to_none=True)
                with self.autocast(autocast):
                    loss = self.loss(model, guide, images, step)
                value = float(loss.detach())  # the trainer reads every loss back (one sync per step)
                losses.append(value)
                if not math.isfinite(value):
                    break
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
            self.synchronize()
            seconds = time.perf_counter() - t0
            finite = all(math.isfinite(v) for v in losses) and all(bool(torch.isfinite(p).all()) for p in params)
            return dict(losses=losses, finite=finite and len(losses) == steps, seconds=seconds)

        return take

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, steps: int, warmup: int, bf16_steps: int, rtol: float, validation: bool) -> Dict:
        import pyro

        with pyro.validation_enabled(validation):
            t0 = time.perf_counter()
            self.cpu_reference()
            self.row["cpu_seconds"] = time.perf_counter() - t0
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
            model, guide = self.build(self.device)
            self.row["device_loss"] = self.replayed_loss(model, guide)
            self.row["rel_diff"] = relative(self.row["device_loss"], self.cpu_loss)
            take = self.stepper(model, guide)
            warm = take(warmup)
            timed = take(steps, start=warmup) if warm["finite"] else warm
            self.row.update(finite=timed["finite"], steps_per_second=len(timed["losses"]) / timed["seconds"],
                            peak_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None)
            self.row["passed"] = self.row["replay"] <= RTOL_REPLAY and self.row["rel_diff"] <= rtol and timed["finite"]
            self.row["bf16"] = self.bf16(bf16_steps)
        return self.row

    def bf16(self, steps: int) -> str:
        """The bf16 autocast attempt in words; an error is reported, not raised."""
        try:
            model, guide = self.build(self.device)
            loss = self.replayed_loss(model, guide, autocast=True)
            if not math.isfinite(loss):
                return f"step-0 loss {loss}"
            result = self.stepper(model, guide, autocast=True)(steps)
            words = (f"finite over {steps} steps" if result["finite"]
                     else f"non-finite at step {len(result['losses']) - 1}")
            return f"{words}; step 0 {relative(loss, self.cpu_loss):.1e} from CPU"
        except Exception as e:  # noqa: BLE001 -- an attempt: any failure is its result
            return f"error: {type(e).__name__}: {str(e).splitlines()[0][:80]}"


# ---------------------------------------------------------------------------------------- report
def table(rows: List[Dict]) -> str:
    head = ["case", "parameters", "CPU loss", "CUDA loss", "rel. diff", "replay", "SVI steps finite",
            "steps/s", "peak memory", "bf16 autocast", "passed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [r["case"], str(r.get("parameters", "")), "", "", "", "", "", "", "", "", f"**no**: {r['error']}"]
        else:
            peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2 ** 30:.2f} GiB"
            cells = [f"{r['case']} ({r['note']})", f"{r['parameters']:,}", f"{r['cpu_loss']:.6g}", f"{r['device_loss']:.6g}",
                     f"{r['rel_diff']:.1e}", f"{r['replay']:.0e}", "yes" if r["finite"] else "**no**",
                     f"{r['steps_per_second']:.2f}", peak, r["bf16"], "yes" if r["passed"] else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check(cases: List[Case], device: torch.device, batch_size: int, steps: int, warmup: int, bf16_steps: int,
          rtol: float, validation: bool, echo=print) -> List[Dict]:
    """Run every case; a case that raises gets an ``error`` row (traceback on stderr)."""
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        try:
            row = CaseCheck(case, device, batch_size).run(steps, warmup, bf16_steps, rtol, validation)
        except Exception as e:  # noqa: BLE001 -- one broken model must not hide the others
            traceback.print_exc()
            row = dict(case=case.name, error=f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
        echo(f"{case.name}: {time.perf_counter() - t0:.1f} s")
        rows.append(row)
    return rows


@click.command(help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", default="cuda", show_default=True, help="the CUDA device to check (cuda or cuda:N)")
@click.option("--case", "names", multiple=True, help="a case to run (repeatable; default all: econ-paper, gnm-mnist, gnm-arrow)")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="images per step (the authors' 32)")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1), help="timed SVI steps per case")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="SVI steps before timing")
@click.option("--bf16-steps", default=5, show_default=True, type=click.IntRange(min=1), help="SVI steps under bf16 autocast")
@click.option("--tf32/--no-tf32", default=True, show_default=True,
              help="TF32 in cuDNN convolutions (PyTorch's default, as in training); off: full float32 and a tighter tolerance")
@click.option("--rtol", type=float, default=None,
              help=f"tolerance of the CUDA loss relative to the CPU one [default: {RTOL_TF32} with TF32, {RTOL_FP32} without]")
@click.option("--validation/--no-validation", default=True, show_default=True,
              help="Pyro's argument checks during the steps (on in the trainer)")
@click.option("--threads", default=os.cpu_count(), show_default=True, type=click.IntRange(min=1),
              help="CPU threads for the CPU reference")
def main(device, names, batch_size, steps, warmup, bf16_steps, tf32, rtol, validation, threads):
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no GPU is visible"
        click.echo(f"gpu_check: CUDA is not available here ({build}, torch {torch.__version__}); run it on a "
                   f"machine with an NVIDIA GPU. Nothing was checked.", err=True)
        sys.exit(2)
    from inference.devices import parse_device

    torch_device = parse_device(device)
    if torch_device.type != "cuda":
        raise click.BadParameter("the GPU check runs on a CUDA device (cuda or cuda:N)", param_hint="--device")
    cases = all_cases()
    unknown = [n for n in names if n not in {c.name for c in cases}]
    if unknown:
        raise click.BadParameter(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(c.name for c in cases)}",
                                 param_hint="--case")
    cases = [c for c in cases if not names or c.name in names]
    torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32 = tf32
    if not tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
    rtol = rtol if rtol is not None else (RTOL_TF32 if tf32 else RTOL_FP32)
    import pyro

    props = torch.cuda.get_device_properties(torch_device)
    click.echo(f"GPU check: {props.name} ({props.total_memory / 2 ** 30:.0f} GiB), torch {torch.__version__} "
               f"(CUDA {torch.version.cuda}), pyro {pyro.__version__}; batch {batch_size}, {warmup} + {steps} timed "
               f"steps, TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, TF32 matmul "
               f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, rtol {rtol:g}, Pyro validation "
               f"{'on' if validation else 'off'}, {threads} CPU threads")
    t0 = time.perf_counter()
    rows = check(cases, torch_device, batch_size, steps, warmup, bf16_steps, rtol, validation, echo=click.echo)
    click.echo("")
    click.echo(table(rows))
    passed = all(r.get("passed") for r in rows)
    click.echo(f"\n{'all passed' if passed else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
