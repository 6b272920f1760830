"""What reusing the guide's StructDRAW decoder states in the model would save (issue 10, code
health item 6): one GNM SVI step as the library runs it (the model recomputes the decoder on the
guide's z^g) against the same step with the model reusing the states the guide computed.

    python benchmarks/bench_gnm_memo.py [--preset cpu] [--batch-size 32] [--repeats 20] [--rounds 5]

The library had such a memo (keyed on tensor identity, hidden state shared by model and guide);
it was removed because it saved 1-7% of a step (docs/gnm.md, "The guide"). Both steps (loss
under all handlers, backward, clipping, RMSprop) are timed interleaved in one process
(:func:`bench_gnm.median_times`); each round prints both medians and their ratio, the last line
the median ratio over the rounds.
"""
from __future__ import annotations

import contextlib
import statistics

import click
import pyro
import torch

from bench_gnm import build, median_times


@contextlib.contextmanager
def reuse_decoder_states(draw):
    """Within the block, ``draw.step`` on a z^g it has seen (same storage, as when the model is
    replayed on the guide's trace) returns the states computed then instead of recomputing."""
    memo, step = {}, draw.step

    def cached(z_g, state):
        key = (z_g.data_ptr(), z_g.shape)
        if key not in memo:
            memo[key] = step(z_g, state)
        return memo[key]

    draw.step = cached
    try:
        yield
    finally:
        del draw.step


@click.command(help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", default="cpu", show_default=True, help="GNM architecture preset (pyro_scenes.gnm.config.PRESETS).")
@click.option("--dataset", default="mnist4", show_default=True, help="Dataset whose recipe defaults to use.")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Images per step.")
@click.option("--repeats", default=20, show_default=True, type=int, help="Timed steps of each kind per round; the median counts.")
@click.option("--rounds", default=5, show_default=True, type=int, help="Rounds of timed steps.")
@click.option("--threads", default=1, show_default=True, type=int, help="torch intra-op threads.")
@click.option("--step", default=5_000, show_default=True, type=int, help="training step (schedules) to time")
def main(preset, dataset, batch_size, repeats, rounds, threads, step):
    torch.set_num_threads(threads)
    pyro.enable_validation(False)
    recipe, config, model, guide, opt, clip, x = build(preset, dataset, batch_size)
    params = [p for group in opt.param_groups for p in group["params"]]

    def step_function(reuse):
        def run():
            opt.zero_grad(set_to_none=True)
            with reuse_decoder_states(model.draw) if reuse else contextlib.nullcontext():
                loss = recipe.loss(model, guide, x, step, config)[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        return run

    print(f"GNM preset {preset!r}, batch {batch_size}, {threads} thread(s), step {step}, "
          f"median of {repeats} per round")
    ratios = []
    for r in range(rounds):
        (reused, library), _ = median_times([step_function(True), step_function(False)], repeats)
        ratios.append(reused / library)
        print(f"  round {r + 1}: reusing the guide's states {reused:.4f} s, recomputing (library) {library:.4f} s, "
              f"ratio {reused / library:.3f}")
    print(f"median ratio (reusing / recomputing) over {rounds} rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
