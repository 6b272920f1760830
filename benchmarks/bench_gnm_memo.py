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

import argparse
import contextlib
import statistics

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--dataset", default="mnist4")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--step", type=int, default=5_000, help="training step (schedules) to time")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pyro.enable_validation(False)
    recipe, config, model, guide, opt, clip, x = build(a.preset, a.dataset, a.batch_size)
    params = [p for group in opt.param_groups for p in group["params"]]

    def step(reuse):
        def run():
            opt.zero_grad(set_to_none=True)
            with reuse_decoder_states(model.draw) if reuse else contextlib.nullcontext():
                loss = recipe.loss(model, guide, x, a.step, config)[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        return run

    print(f"GNM preset {a.preset!r}, batch {a.batch_size}, {a.threads} thread(s), step {a.step}, "
          f"median of {a.repeats} per round")
    ratios = []
    for r in range(a.rounds):
        (reused, library), _ = median_times([step(True), step(False)], a.repeats)
        ratios.append(reused / library)
        print(f"  round {r + 1}: reusing the guide's states {reused:.4f} s, recomputing (library) {library:.4f} s, "
              f"ratio {reused / library:.3f}")
    print(f"median ratio (reusing / recomputing) over {a.rounds} rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
