"""Dataset generation speed: scenes per second through the batched ``generate`` path.

    python benchmarks/bench_datasets.py [--scenes 4096] [--batch-size 256] [--threads N]
                                        [--repeats 3] [--all]

Targets (issue 2): >= 2,000 scenes/s for 64x64 sprites and >= 500 scenes/s for 128x128
MNIST-4 (synthetic digits) on the 2-core CPU machine.  Each figure is the best of
``--repeats`` timed passes over ``--scenes`` scenes after one warm-up batch; the one-off cost
of building the synthetic digit bank is reported separately.  The 1-minute load average is
printed because the machine may be shared.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import ArrowScenes, MultiDigit, Sprites  # noqa: E402
from datasets.digits import SyntheticDigits  # noqa: E402

TARGETS = {"sprites-unique": 2000, "mnist4": 500}


def bench(ds, scenes: int, batch_size: int, repeats: int) -> float:
    ds.generate(range(min(batch_size, len(ds))))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, scenes, batch_size):
            ds.generate(range(s, min(scenes, s + batch_size)))
        best = min(best, time.perf_counter() - t0)
    return scenes / best


@click.command(help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scenes", default=4096, show_default=True, help="Scenes per timed pass.")
@click.option("--batch-size", default=256, show_default=True, help="Scenes per generate call.")
@click.option("--threads", multiple=True, type=int,
              help="torch thread counts to time (repeatable; default: 1 and torch's default).")
@click.option("--repeats", default=3, show_default=True, help="Timed passes; the best counts.")
@click.option("--all", "run_all", is_flag=True, help="Also time mnist10, mnist4-10 and arrow.")
def main(scenes, batch_size, threads, repeats, run_all):
    threads = threads or sorted({1, torch.get_num_threads()})
    t0 = time.perf_counter()
    digits = SyntheticDigits(seed=0)
    bank_s = time.perf_counter() - t0
    cases = [("sprites-unique", Sprites(scenes, "unique", image_size=64)),
             ("mnist4", MultiDigit(scenes, "mnist4", image_size=128, digit_source=digits))]
    if run_all:
        cases += [("sprites-random", Sprites(scenes, "random", image_size=64)),
                  ("mnist10", MultiDigit(scenes, "mnist10", digit_source=digits)),
                  ("mnist4-10", MultiDigit(scenes, "mnist4-10", digit_source=digits)),
                  ("arrow", ArrowScenes(scenes))]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.2f}; "
          f"batch {batch_size}, {scenes} scenes x best of {repeats}")
    print(f"synthetic digit bank (one-off): {bank_s:.2f} s")
    print(f"{'dataset':<16}{'size':>6}{'threads':>8}{'scenes/s':>12}{'target':>9}  ok")
    best = {}
    for name, ds in cases:
        for n in threads:
            torch.set_num_threads(n)
            rate = bench(ds, scenes, batch_size, repeats)
            best[name] = max(best.get(name, 0.0), rate)
            target = TARGETS.get(name)
            mark = "" if target is None else ("yes" if rate >= target else "NO")
            print(f"{name:<16}{ds.image_size:>6}{n:>8}{rate:>12,.0f}{target or '-':>9}  {mark}")
    # exit status: every target met with the best thread setting
    sys.exit(0 if all(best[k] >= v for k, v in TARGETS.items()) else 1)


if __name__ == "__main__":
    main()
