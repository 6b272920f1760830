"""Compare generative scene models on one dataset: the GNM paper's Table 1 (S-Acc, D-Steps, LL) and
Figure 7 (a row of generations per model) as one command, ``python -m inference.compare``
(docs/compare.md).

Each comparison name (:data:`REGISTRY`) is a recipe with the settings that make the variant
(``gnm-8`` is the ``gnm`` recipe with ``draw_steps=8``); nothing else here names a model. For
every model of ``--models`` the comparison

1. resolves and validates its config before anything runs: its recipe's defaults for the dataset
   < the flags (``--batch-size``, ...) < ``--set KEY=VALUE`` (every model that has the setting)
   < the registry's settings < ``--set NAME:KEY=VALUE`` (that model only);
2. plans its steps: ``--steps N`` for every model, or ``--budget-minutes M`` turned into
   ``floor(M * 60 / seconds_per_step)`` by a calibration run (:func:`calibrate`), recorded in
   ``OUT/plan.json`` so that a resumed comparison trains to the same steps;
3. trains it in ``OUT/NAME`` with the trainer, ``python -m inference.svi``, as a subprocess
   (:func:`run_trainer`): a new run, ``--resume`` of a partial one, or nothing for a run already
   at the planned step. A subprocess because (a) a crash, a divergence or an out-of-memory of one
   model ends that model only and its memory (GPU included) is returned before the next one, (b)
   Ctrl-C and ``--resume`` are the trainer's own, exact and tested behaviour (the child gets one
   SIGINT, finishes its step, writes its checkpoint and exits 130), and (c) the trainer's log is
   kept whole in ``OUT/NAME/train.log`` while the terminal shows one status line per model;
4. evaluates the checkpoint at the planned step with :func:`inference.evaluate.evaluate` on the
   same held-out scenes (the test split) into ``OUT/NAME/eval.json``, reused when it is for the
   same step, metrics, scenes, particles and metric options;

then writes ``OUT/table1.md``, ``OUT/table1.json`` and ``OUT/generations.png``. Running the same
command again continues where it stopped. Entry point: :func:`run_comparison`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import click

from inference.training.checkpoint import list_checkpoints, load_checkpoint
from inference.training.config import (
    AMENDMENTS_KEY, RESERVED_KEYS, RESUMABLE_KEYS, defaults_for, parse_value, resolve_config,
    validate_trainer_config,
)
from inference.training.files import atomic_write_text
from inference.training.logs import read_jsonl
from inference.training.rundir import RunDir

#: comparison name -> (recipe name, the settings that make the variant); one line per model
REGISTRY: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "gnm": ("gnm", {}),
    "gnm-8": ("gnm", {"draw_steps": 8}),
    "gnm-beta2": ("gnm", {"beta_g_end": 2.0}),
    "gnm-8-beta2": ("gnm", {"draw_steps": 8, "beta_g_end": 2.0}),
    "genesis": ("genesis", {}),
    "convdraw": ("convdraw", {}),
    "convdraw-8": ("convdraw", {"draw_steps": 8}),
    "convdraw-beta10": ("convdraw", {"beta": 10.0}),
    "convdraw-8-beta10": ("convdraw", {"draw_steps": 8, "beta": 10.0}),
    "vae": ("vae", {}),
}

#: ``--models`` by default: Figure 7's models and the ConvDRAW beta variant of Table 1
DEFAULT_MODELS = ("gnm", "gnm-8", "convdraw", "convdraw-8", "convdraw-beta10", "vae", "genesis")
DEFAULT_METRICS = ("s-acc", "d-steps", "ll")
DEFAULT_DATASET = "mnist4-10"

#: the GNM paper's Table 1 (supplement; MNIST-4-10 at 128x128): name -> (its label, S-Acc, D-Steps, LL)
PAPER_TABLE1: Dict[str, Tuple[str, float, int, int]] = {
    "gnm": ("GNM", 0.692, 5279, 10693),
    "gnm-8": ("GNM-8", 0.852, 6639, 10692),
    "gnm-beta2": ("GNM-β-2", 0.916, 1719, 10684),
    "gnm-8-beta2": ("GNM-8-β-2", 0.960, 3599, 10693),
    "genesis": ("GENESIS", 0.016, 199, 10084),
    "convdraw": ("ConvDRAW", 0.000, 959, 10756),
    "convdraw-8": ("ConvDRAW-8", 0.004, 1759, 10775),
    "convdraw-beta10": ("ConvDRAW-β-10", 0.560, 2399, 10429),
    "convdraw-8-beta10": ("ConvDRAW-8-β-10", 0.880, 1759, 10479),
}
PAPER_DATASET = "mnist4-10"

#: how the table names a metric's column (others: the metric's name)
METRIC_COLUMNS = {"s-acc": "S-Acc", "s-acc-layout": "S-Acc layout", "d-steps": "D-Steps", "ll": "LL (nats, higher is better)"}

#: steps of a calibration run: the first WARMUP_STEPS are not timed, the next TIMED_STEPS are
WARMUP_STEPS = 2
TIMED_STEPS = 10

PLAN = "plan.json"
TABLE_MD = "table1.md"
TABLE_JSON = "table1.json"
GENERATIONS_PNG = "generations.png"
EVAL_JSON = "eval.json"
TRAIN_LOG = "train.log"
CALIBRATION_DIR = ".calibration"


class ComparisonInterrupted(Exception):
    """Ctrl-C (or SIGTERM): the trainer wrote its checkpoint; the same command continues."""


# ---------------------------------------------------------------------------------------- input
def parse_models(spec: Optional[Iterable[str]]) -> List[str]:
    """``["gnm,gnm-8", "vae"]`` -> ``["gnm", "gnm-8", "vae"]`` (:data:`DEFAULT_MODELS` when empty);
    an unknown name is a :class:`click.BadParameter` listing the valid ones."""
    names = [n.strip() for item in (spec or ()) for n in str(item).split(",") if n.strip()]
    if not names:
        return list(DEFAULT_MODELS)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise click.BadParameter(f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(REGISTRY)}",
                                 param_hint="'--models'")
    return list(dict.fromkeys(names))


def split_sets(items: Iterable[str], names: Sequence[str]) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """``--set`` items into the settings for every model and those for one model:
    ``["lr=1e-3", "gnm-8:draw_steps=6"]`` -> ``({"lr": 0.001}, {"gnm-8": {"draw_steps": 6}})``.
    VALUE is read as JSON, else as a string; a NAME not among ``names`` is an error."""
    common: Dict[str, Any] = {}
    own: Dict[str, Dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE or NAME:KEY=VALUE", param_hint="'--set'")
        value = parse_value(text)
        if ":" in key:
            name, _, key = key.partition(":")
            name, key = name.strip(), key.strip()
            if not key:
                raise click.BadParameter(f"{item!r}: expected NAME:KEY=VALUE", param_hint="'--set'")
            if name not in names:
                where = (f"it is not among --models ({', '.join(names)})" if name in REGISTRY
                         else f"valid models: {', '.join(REGISTRY)}")
                raise click.BadParameter(f"{item!r}: unknown model {name!r}; {where}", param_hint="'--set'")
            own.setdefault(name, {})[key] = value
        else:
            common[key] = value
    return common, own


def parse_metric_options(items: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """``["d-steps:max_steps=40"]`` -> ``{"d-steps": {"max_steps": 40}}`` (VALUE read as JSON)."""
    out: Dict[str, Dict[str, Any]] = {}
    for item in items:
        head, sep, text = item.partition("=")
        metric, colon, key = head.partition(":")
        if not sep or not colon or not metric.strip() or not key.strip():
            raise click.BadParameter(f"{item!r}: expected METRIC:KEY=VALUE, e.g. d-steps:max_steps=400",
                                     param_hint="'--metric-option'")
        out.setdefault(metric.strip(), {})[key.strip()] = parse_value(text)
    return out


def ordered_metrics(metrics: Optional[Sequence[str]]) -> List[str]:
    """``metrics`` (None: :data:`DEFAULT_METRICS`) in the table's column order: Table 1's first."""
    wanted = list(dict.fromkeys(metrics)) if metrics else list(DEFAULT_METRICS)
    known = [m for m in DEFAULT_METRICS if m in wanted]
    return known + [m for m in wanted if m not in known]


def steps_for_budget(minutes: float, seconds_per_step: float) -> int:
    """The whole steps that fit ``minutes`` of training at ``seconds_per_step``: ``floor(M * 60 / s)``
    (at least 1; a hair of tolerance so that 0.1 min at 0.2 s/step is 30 steps, not 29)."""
    if not minutes > 0 or not seconds_per_step > 0:
        raise ValueError(f"minutes ({minutes}) and seconds per step ({seconds_per_step}) must be positive")
    return max(1, math.floor(minutes * 60.0 / seconds_per_step + 1e-9))


def seconds_per_step(records: Sequence[Dict[str, Any]], warmup: int = WARMUP_STEPS) -> Tuple[float, int]:
    """Mean seconds per step of the ``log.jsonl`` records of a run logged every step (``log_every=1``)
    after the first ``warmup`` steps: ``(seconds, steps timed)``."""
    timed = [float(r["sec_per_step"]) for r in records if r.get("step", 0) > warmup and "sec_per_step" in r]
    if not timed:
        raise ValueError(f"no timed step after the {warmup} warm-up steps in the calibration log")
    return sum(timed) / len(timed), len(timed)


# ---------------------------------------------------------------------------------------- models
@dataclass
class Entry:
    """One model of the comparison: its recipe, resolved config and run directory."""

    name: str
    recipe: Any
    overrides: Dict[str, Any]
    config: Dict[str, Any]
    run_dir: Path
    metrics: List[str]
    steps: Optional[int] = None
    calibration: Optional[Dict[str, Any]] = None

    @property
    def defaults(self) -> Dict[str, Any]:
        return defaults_for(self.recipe, self.config["dataset"])


def _recipe(name: str, recipe_name: str):
    import inference.recipes as recipes

    if recipe_name not in recipes.RECIPES:
        raise click.UsageError(f"model {name}: its recipe {recipe_name!r} is not registered (inference/recipes/__init__.py "
                               f"RECIPES has {', '.join(sorted(recipes.RECIPES))})")
    try:
        return recipes.get_recipe(recipe_name)
    except Exception as e:  # ImportError, or a bug in the recipe's module
        raise click.ClickException(f"model {name}: the recipe {recipe_name!r} could not be loaded: "
                                   f"{type(e).__name__}: {e}") from None


def config_digest(config: Dict[str, Any]) -> str:
    """A hash of the settings that change what a step computes (not the resumable ones, nor ``steps``)."""
    kept = {k: v for k, v in config.items() if k not in RESUMABLE_KEYS and k != AMENDMENTS_KEY}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def resolve_entries(names: Sequence[str], dataset: str, out: Path, flags: Dict[str, Any], common: Dict[str, Any],
                    own: Dict[str, Dict[str, Any]], metrics: Optional[Sequence[str]] = None,
                    echo: Callable[[str], None] = click.echo) -> List[Entry]:
    """Each model's recipe and validated config (its ``steps`` left to :func:`plan_steps`).

    A ``--set`` for every model goes to those whose recipe has the setting (an error if none has
    it), under the registry's settings; ``own`` (``--set NAME:KEY=VALUE``) goes over both.
    ``metrics`` (None: :data:`DEFAULT_METRICS`) are kept per model where its recipe computes them.
    """
    recipes = {name: _recipe(name, REGISTRY[name][0]) for name in names}
    for name, recipe in recipes.items():
        if dataset not in recipe.datasets:
            raise click.UsageError(f"--dataset {dataset}: model {name} (recipe {recipe.name!r}) has no such dataset; "
                                   f"its datasets: {', '.join(recipe.datasets)}")
    defaults = {name: defaults_for(recipe, dataset) for name, recipe in recipes.items()}
    for key in common:
        if key in RESERVED_KEYS:
            raise click.UsageError(f"--set {key}: use --{key} instead")
        if not any(key in d for d in defaults.values()):
            raise click.UsageError(f"--set {key}: none of the models ({', '.join(names)}) has a setting {key!r}")
    wanted = ordered_metrics(metrics)
    for metric in wanted:
        if not any(metric in r.metrics for r in recipes.values()):
            raise click.UsageError(f"--metrics {metric}: no model among {', '.join(names)} computes it")
    entries = []
    for name in names:
        recipe, variant = recipes[name], REGISTRY[name][1]
        shadowed = [k for k in common if k in variant and common[k] != variant[k]]
        if shadowed:
            echo(f"note: {name} keeps its own {', '.join(f'{k}={variant[k]!r}' for k in shadowed)} "
                 f"(use --set {name}:KEY=VALUE to change it)")
        sets = {**{k: v for k, v in common.items() if k in defaults[name]}, **variant, **own.get(name, {})}
        try:
            config = resolve_config(recipe, dataset, {}, flags, sets)
            validate_trainer_config(config)
            recipe.validate_config(config)
        except ValueError as e:  # ConfigError included
            raise click.UsageError(f"model {name}: {e}") from None
        entries.append(Entry(name=name, recipe=recipe, overrides={**variant, **own.get(name, {})}, config=config,
                             run_dir=out / name, metrics=[m for m in wanted if m in recipe.metrics]))
    return entries


# ---------------------------------------------------------------------------------------- runs
def trainer_arguments(entry: Entry, steps: int, device: str, out: Path, resume: bool = False,
                      config: Optional[Dict[str, Any]] = None) -> List[str]:
    """``python -m inference.svi`` arguments that train ``entry`` (or ``config``) to ``steps`` in
    ``out``: every setting that differs from the recipe's defaults as ``--set KEY=JSON``."""
    config = config if config is not None else entry.config
    defaults = entry.defaults
    sets = [f"{k}={json.dumps(v)}" for k, v in sorted(config.items())
            if k not in RESERVED_KEYS and k != "steps" and k != AMENDMENTS_KEY and defaults.get(k, object()) != v]
    kind, _ = child_device(device)
    args = ["--out", str(out), "--steps", str(steps), "--device", kind]
    if resume:
        args.insert(0, "--resume")
    else:
        args = ["--model", entry.recipe.name, "--dataset", config["dataset"]] + args
    for s in sets:
        args += ["--set", s]
    return args


def child_device(device: str) -> Tuple[str, Dict[str, str]]:
    """The trainer's ``--device`` (cpu or cuda) and environment for ``device`` (``cuda:N``: that GPU
    made the child's only visible one)."""
    kind, _, index = str(device).partition(":")
    if kind != "cuda" or not index:
        return kind, {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else None
    return "cuda", {"CUDA_VISIBLE_DEVICES": ids[int(index)] if ids and int(index) < len(ids) else index}


def check_run_dir(entry: Entry) -> Optional[List[Tuple[int, Path]]]:
    """The checkpoints of the run in ``OUT/NAME`` (None: it holds no run). A run of another model,
    dataset or config (bar the resumable settings), or one without a checkpoint, is a usage error."""
    rd = RunDir(entry.run_dir)
    if rd.path.exists() and not rd.path.is_dir():
        raise click.UsageError(f"{rd.path} exists and is not a directory")
    if not rd.holds_run():
        return None
    saved = rd.read_config()
    if saved is None:
        raise click.UsageError(f"{rd.path} holds run files without a readable config.json; move it away to retrain")
    here, asked = (saved.get("model"), saved.get("dataset")), (entry.recipe.name, entry.config["dataset"])
    if here != asked:
        raise click.UsageError(f"{rd.path} holds a run of model {here[0]!r} on {here[1]!r}, not {asked[0]!r} on "
                               f"{asked[1]!r}; use another --out")
    saved = entry.recipe.complete_config(saved)
    differ = sorted(k for k in set(saved) | set(entry.config)
                    if k not in RESUMABLE_KEYS and k not in (AMENDMENTS_KEY, *RESERVED_KEYS)
                    and saved.get(k) != entry.config.get(k))
    if differ:
        shown = ", ".join(f"{k}={json.dumps(saved.get(k))} (asked {json.dumps(entry.config.get(k))})" for k in differ[:6])
        raise click.UsageError(f"{rd.path} holds a run of {entry.name} with other settings: {shown}; use another --out, "
                               f"or move {rd.path} away to retrain it")
    found = list_checkpoints(rd.ckpt_dir)
    if not found:
        raise click.UsageError(f"{rd.path}: the run stopped before its first checkpoint; delete {rd.path} to start it again")
    return found


def run_state(entry: Entry, steps: int) -> Tuple[str, int, Optional[Path]]:
    """What ``OUT/NAME`` holds for a run of ``steps``: ``("new", 0, None)``, ``("resume", step,
    latest)`` or ``("done", steps, checkpoint at steps)``. Besides :func:`check_run_dir`'s errors,
    a run beyond ``steps`` that no longer has its checkpoint at ``steps`` is a usage error."""
    found = check_run_dir(entry)
    if found is None:
        return "new", 0, None
    rd = RunDir(entry.run_dir)
    latest_step, latest = found[-1]
    if latest_step < steps:
        return "resume", latest_step, latest
    at = dict(found).get(steps)
    if at is None:
        raise click.UsageError(f"{rd.path} has trained to step {latest_step}, past the {steps} steps asked, and no longer "
                               f"has its checkpoint at step {steps}; ask for --steps {latest_step} or use another --out")
    return "done", steps, at


# ---------------------------------------------------------------------------------------- status
class Status:
    """One line per model: rewritten in place on a terminal, else printed when its phase changes
    (and at most every :attr:`every` seconds while training)."""

    def __init__(self, names: Sequence[str], echo: Callable[..., None] = click.echo, tty: Optional[bool] = None,
                 every: float = 30.0):
        self.width = max(len(n) for n in names) if names else 8
        self.echo = echo
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.every = every
        self._last: Tuple[str, str, float] = ("", "", 0.0)
        self._open = False

    def show(self, name: str, text: str, phase: Optional[str] = None) -> None:
        line = f"{name:<{self.width}}  {text}"
        phase = phase or text
        if self.tty:
            self.echo("\r\x1b[K" + line, nl=False)
            self._open = True
            return
        last_name, last_phase, at = self._last
        if (name, phase) != (last_name, last_phase) or time.monotonic() - at >= self.every:
            self.echo(line)
            self._last = (name, phase, time.monotonic())

    def done(self, name: str, text: str) -> None:
        line = f"{name:<{self.width}}  {text}"
        self.echo(("\r\x1b[K" if self.tty else "") + line)
        self._open = False
        self._last = (name, "", 0.0)

    def note(self, text: str) -> None:
        """A line of its own (a warning), below the current status line."""
        if self.tty and self._open:
            self.echo("")
            self._open = False
        self.echo(text)


# ---------------------------------------------------------------------------------------- trainer
@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (so the child is stopped with its checkpoint) while in effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _repo_env(extra: Dict[str, str]) -> Dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1", **extra}


def run_trainer(args: Sequence[str], log_path: Path, env: Dict[str, str], on_line: Callable[[str], None] = lambda _: None,
                on_interrupt: Callable[[], None] = lambda: None) -> int:
    """Run ``python -m inference.svi ARGS``, its output appended to ``log_path`` and each line
    passed to ``on_line``; return its exit status.

    The child runs in its own session, so a Ctrl-C at the terminal reaches only this process,
    which forwards one SIGINT: the trainer finishes its step, writes a checkpoint and exits 130.
    A second Ctrl-C is forwarded too (the trainer then stops at once). Either way
    :class:`ComparisonInterrupted` is raised once the child has exited.
    """
    argv = [sys.executable, "-m", "inference.svi", *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    interrupted = False
    with open(log_path, "a") as log, _sigterm_as_interrupt():
        log.write(f"$ {' '.join(shlex.quote(a) for a in argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=_repo_env(env), start_new_session=True)
        try:
            while True:
                try:
                    for line in proc.stdout:
                        log.write(line)
                        log.flush()
                        on_line(line.rstrip("\n"))
                    break
                except KeyboardInterrupt:
                    interrupted = True
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)
                        on_interrupt()
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # an error of this process: leave no trainer behind
                proc.kill()
                proc.wait()
    if interrupted or rc == 130:
        raise ComparisonInterrupted(f"interrupted; the trainer's output is in {log_path}")
    return rc


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _trainer_line(status: Status, name: str, total: int, start: int) -> Callable[[str], None]:
    """``on_line`` for :func:`run_trainer`: the trainer's ``step N/M ... X s/step`` lines as status."""
    import re

    pattern = re.compile(r"^step (\d+)/(\d+)\b.*?([0-9.eE+-]+) s/step")
    status.show(name, f"training {start}/{total}", "training")

    def on_line(line: str) -> None:
        m = pattern.match(line)
        if m:
            status.show(name, f"training {m.group(1)}/{m.group(2)}  {float(m.group(3)):.3g} s/step", "training")
    return on_line


def calibrate(entry: Entry, out: Path, device: str, status: Status, warmup: int = WARMUP_STEPS,
              timed: int = TIMED_STEPS) -> Dict[str, Any]:
    """Seconds per step of ``entry`` on ``device``: a throwaway run (``OUT/.calibration/NAME``, deleted
    after) of ``warmup + timed`` steps with the model's config, one log line a step; the mean of the
    trainer's own step times (batch, forward, backward, update) after the warm-up."""
    where = out / CALIBRATION_DIR / entry.name
    shutil.rmtree(where, ignore_errors=True)
    config = {**entry.config, "log_every": 1, "val_every": 0, "ckpt_every": 0, "keep": 1, "figures_every": 0,
              "tensorboard": False, "val_items": 1}
    args = trainer_arguments(entry, warmup + timed, device, where, config=config)
    status.show(entry.name, f"calibrating ({warmup} + {timed} steps)")
    log_path = out / CALIBRATION_DIR / f"{entry.name}.log"
    log_path.unlink(missing_ok=True)
    rc = run_trainer(args, log_path, child_device(device)[1],
                     on_interrupt=lambda: status.note(f"interrupt: stopping the calibration of {entry.name}"))
    if rc != 0:
        raise click.ClickException(f"the calibration run of {entry.name} failed (exit {rc}); its output, "
                                   f"{log_path}, ends:\n{_tail(log_path)}")
    sps, n = seconds_per_step(read_jsonl(where / "log.jsonl"), warmup)
    shutil.rmtree(where, ignore_errors=True)
    log_path.unlink(missing_ok=True)
    with suppress(OSError):  # the folder, when no other calibration is left in it
        (out / CALIBRATION_DIR).rmdir()
    return {"seconds_per_step": sps, "warmup_steps": warmup, "timed_steps": n, "device": str(device),
            "config_digest": config_digest(entry.config), "batch_size": entry.config.get("batch_size"),
            "measured": time.strftime("%Y-%m-%d %H:%M:%S")}


def read_json_object(path: Path) -> Dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or not an object
    (the plan is then made again, the model evaluated again)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def read_plan(out: Path) -> Dict[str, Any]:
    return read_json_object(out / PLAN)


def write_plan(out: Path, plan: Dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLAN, json.dumps(plan, indent=2, sort_keys=True) + "\n")


def plan_steps(entries: Sequence[Entry], out: Path, dataset: str, device: str, steps: Optional[int],
               budget_minutes: Optional[float], status: Status,
               calibrate_fn: Optional[Callable[[Entry], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Set each entry's ``steps`` and record the plan in ``OUT/plan.json``.

    ``steps``: that many for every model. ``budget_minutes``: :func:`steps_for_budget` of each
    model's calibration, reused from plan.json when it was measured for the same config (bar the
    resumable settings) on the same device, else measured now (``calibrate_fn``, default
    :func:`calibrate`) and saved at once. Neither: the steps plan.json holds for each model.
    """
    if steps is not None and budget_minutes is not None:
        raise click.UsageError("give --steps or --budget-minutes, not both")
    calibrate_fn = calibrate_fn or (lambda e: calibrate(e, out, device, status))
    plan = read_plan(out)
    if plan.get("dataset") not in (None, dataset):
        raise click.UsageError(f"{out / PLAN} is a comparison on {plan['dataset']!r}, not {dataset!r}; use another --out")
    if steps is None and budget_minutes is None:
        missing = [e.name for e in entries if not plan.get("models", {}).get(e.name, {}).get("steps")]
        if missing:
            raise click.UsageError("give --steps N or --budget-minutes M" + (
                f" ({out / PLAN} has no steps for {', '.join(missing)})" if plan else ""))
        budget_minutes, steps = plan.get("budget_minutes"), None
        reuse = True
    else:
        reuse = False
    plan.update(dataset=dataset, device=str(device))
    if not reuse:
        plan.update(budget_minutes=budget_minutes, steps=steps)
    models = plan.setdefault("models", {})
    for e in entries:
        record = models.setdefault(e.name, {})
        record.update(recipe=e.recipe.name, overrides=e.overrides)
        if reuse:
            e.steps, e.calibration = int(record["steps"]), record.get("calibration")
            continue
        if steps is not None:
            e.steps = int(steps)
        else:
            cal = record.get("calibration")
            if not (cal and cal.get("config_digest") == config_digest(e.config) and cal.get("device") == str(device)):
                cal = calibrate_fn(e)
                record["calibration"] = cal
            e.calibration = cal
            e.steps = steps_for_budget(budget_minutes, cal["seconds_per_step"])
            status.done(e.name, f"calibrated: {cal['seconds_per_step']:.3g} s/step -> {e.steps} steps in "
                                f"{budget_minutes:g} min")
        record["steps"] = e.steps
        write_plan(out, plan)
    write_plan(out, plan)
    return plan


def train(entry: Entry, device: str, status: Status) -> Tuple[Optional[Path], str]:
    """Bring ``OUT/NAME`` to ``entry.steps``: ``(checkpoint, how)`` with how in "reused", "resumed",
    "trained"; ``(None, error)`` when the trainer failed."""
    state, at, path = run_state(entry, entry.steps)
    if state == "done":
        return path, "reused"
    args = trainer_arguments(entry, entry.steps, device, entry.run_dir, resume=state == "resume")
    log_path = entry.run_dir / TRAIN_LOG
    if state == "new":
        entry.run_dir.mkdir(parents=True, exist_ok=True)
    rc = run_trainer(args, log_path, child_device(device)[1], _trainer_line(status, entry.name, entry.steps, at),
                     on_interrupt=lambda: status.note(f"interrupt: {entry.name} finishes its step and writes a "
                                                      f"checkpoint (Ctrl-C again to stop it at once)"))
    if rc != 0:
        return None, f"training failed (exit {rc}); {log_path} ends:\n{_tail(log_path)}"
    found = dict(list_checkpoints(RunDir(entry.run_dir).ckpt_dir)).get(entry.steps)
    if found is None:
        return None, f"the trainer exited without a checkpoint at step {entry.steps}; see {log_path}"
    return found, "resumed" if state == "resume" else "trained"


# ---------------------------------------------------------------------------------------- evaluation
def _canonical(x) -> Any:
    return json.loads(json.dumps(x, sort_keys=True, default=repr))


def evaluation_request(entry: Entry, step: int, num_samples: int, particles: Optional[int],
                       metric_options: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """What an ``eval.json`` must have been made with to be reused."""
    return _canonical(dict(step=step, split="test", metrics=entry.metrics, num_samples=num_samples, particles=particles,
                           metric_options={m: o for m, o in metric_options.items() if m in entry.metrics}))


def evaluate_entry(entry: Entry, checkpoint: Path, step: int, num_samples: int, particles: Optional[int],
                   metric_options: Dict[str, Dict[str, Any]], device: str, batch_size: int) -> Tuple[Dict, bool]:
    """``(report, reused)``: ``OUT/NAME/eval.json`` if made with the same request, else
    :func:`inference.evaluate.evaluate` of ``checkpoint`` on the test split, written there."""
    from inference.evaluate import evaluate

    path = entry.run_dir / EVAL_JSON
    request = evaluation_request(entry, step, num_samples, particles, metric_options)
    old = read_json_object(path)
    if old.get("request") == request and old.get("step") == step:
        return old, True
    report = evaluate(checkpoint, metrics=entry.metrics, num_samples=num_samples, split="test", out=path, device=device,
                      batch_size=batch_size, particles=particles, plots=True, progress=False,
                      metric_options=metric_options)
    report.pop("output", None)
    report["request"] = request
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return report, False


def scenes_digest(recipe, config: Dict[str, Any], n: int) -> str:
    """A hash of the first ``n`` (at most 16) test scenes a model is evaluated on; equal across
    models when they are evaluated on the same held-out scenes."""
    from inference.evaluation.data import scenes

    data = recipe.make_dataset(config, "test")
    images = scenes(data, 0, min(n, 16, len(data)))["image"].float().contiguous()
    return hashlib.sha1(images.numpy().tobytes()).hexdigest()[:16]


def restore_summary(checkpoint: Path, device: str, generations: int, seed: int = 0) -> Dict[str, Any]:
    """From a checkpoint: its ``generations`` (``model.sample(n)`` under ``seed``, clamped to [0, 1],
    on the CPU), the parameter count of model and guide and the training seconds."""
    import torch

    from inference.runs import open_run
    from inference.training.trainer import unique_parameters

    _, recipe, config, model, guide, step = open_run(checkpoint, device)
    elapsed = (load_checkpoint(checkpoint).get("trainer") or {}).get("elapsed")
    torch.manual_seed(seed)
    with torch.no_grad():
        images = model.sample(generations).float().cpu().clamp(0, 1) if generations else None
    params = sum(p.numel() for p in unique_parameters(model, guide))
    return {"generations": images, "parameters": int(params), "train_seconds": elapsed, "recipe": recipe,
            "config": config}


# ---------------------------------------------------------------------------------------- outputs
def _fmt(metric: str, results: Dict[str, Any]) -> str:
    v = results.get(metric)
    if v is None:
        return "—"
    if metric == "d-steps":
        return f"{int(v)}" + ("" if results.get("d-steps_reached", True) else "*")
    if metric == "ll":
        sem = results.get("ll_sem")
        return f"{v:.1f}" + (f" ± {sem:.1f}" if isinstance(sem, (int, float)) and math.isfinite(sem) else "")
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _minutes(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    m = seconds / 60
    return f"{m:.2f}" if m < 10 else f"{m:.1f}"


def table_markdown(summary: Dict[str, Any]) -> str:
    """``table1.md``: the header line, the measured table and the paper's for reference."""
    metrics = summary["metrics"]
    if summary.get("budget_minutes") is not None:
        budget = f"{summary['budget_minutes']:g} minutes of training steps per model (steps from a calibration, plan.json)"
    elif summary.get("steps") is not None:
        budget = f"{summary['steps']} steps per model"
    else:
        budget = "the steps of plan.json"
    ll_images = sorted({r["results"].get("ll_images") for r in summary["models"] if r.get("results", {}).get("ll_images")})
    particles = summary.get("particles")
    ks = sorted({r["results"].get("ll_particles") for r in summary["models"] if r.get("results", {}).get("ll_particles")})
    k_text = f"K = {particles}" if particles else ("K = " + "/".join(map(str, ks)) + " (each model's ll_particles)" if ks else "—")
    lines = [f"# Table 1: {summary['dataset']}", "",
             f"Dataset **{summary['dataset']}**, test split, {summary['num_samples']} held-out scenes"
             + (f" (LL on the first {'/'.join(map(str, ll_images))})" if ll_images else "")
             + f" | budget: {budget} | LL: importance sampling, {k_text} particles | device {summary['device']}", ""]
    # S-Acc comes with its layout part (docs/metrics.md, "S-Acc"), a column of its own
    columns = [c for m in metrics for c in ((m, "s-acc-layout") if m == "s-acc" else (m,))]
    part_of = {"s-acc-layout": "s-acc"}
    head = ["model", *[METRIC_COLUMNS.get(m, m) for m in columns], "steps", "training minutes", "parameters"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["models"]:
        if r["status"] != "done":
            cells = [r["name"], *["—"] * len(columns), str(r.get("steps") or "—"), "—", "—"]
            cells[1] = f"failed: {r.get('error', '').splitlines()[0] if r.get('error') else ''}"
        else:
            cells = [r["name"], *[_fmt(m, r["results"]) if part_of.get(m, m) in r["metrics"] else "n/a" for m in columns],
                     str(r["steps"]), _minutes(r.get("train_seconds")), f"{r['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if any(r.get("results", {}).get("d-steps_reached") is False for r in summary["models"]):
        notes.append("\\* D-Steps: the classifier did not reach the accuracy threshold within its cap (the number is the cap).")
    if "n/a" in "\n".join(lines):
        notes.append("n/a: the model's recipe does not compute that metric.")
    meaning = {"s-acc": "S-Acc: the share of generations that obey the scene structure (higher is better); "
                        "S-Acc layout: the share whose detected digits, whatever their class, obey its layout part",
               "d-steps": "D-Steps: the steps a classifier needs to tell generations from real scenes (higher is better)",
               "ll": "LL: the importance-weighted log p(x) per image"}
    if any(m in meaning for m in metrics):
        notes.append("; ".join(meaning[m] for m in metrics if m in meaning) + ".")
    lines += ["", *notes]
    paper = [n for n in PAPER_TABLE1]
    lines += ["", "## The paper's Table 1 (for reference)", "",
              "GNM paper, supplement Table 1, MNIST-4-10. Its LL is for 128x128 images and is not comparable in "
              "absolute value to LLs at other resolutions (nor across pixel likelihoods); compare the ranking."
              + ("" if summary["dataset"] == PAPER_DATASET else f" This comparison is on {summary['dataset']}, not MNIST-4-10."),
              "", "| model | S-Acc | D-Steps | LL |", "|---|---|---|---|"]
    for n in paper:
        label, s, d, ll = PAPER_TABLE1[n]
        lines.append(f"| {label} ({n}) | {s:.3f} | {d} | {ll} |")
    return "\n".join(lines) + "\n"


def draw_generations(rows: Sequence[Tuple[str, Any]], path: Path, title: str) -> Path:
    """Figure 7: one row of generations per model, labelled with its name."""
    from inference.figures.common import plt, save, show

    n = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.4, 1.1 * len(rows) + 0.6), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            if c < len(images):
                show(ax, images[c])
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title)
    return save(fig, path)


# ---------------------------------------------------------------------------------------- the whole
def run_comparison(dataset: str = DEFAULT_DATASET, models: Optional[Sequence[str]] = None, out: Optional[Path] = None,
                   steps: Optional[int] = None, budget_minutes: Optional[float] = None,
                   flags: Optional[Dict[str, Any]] = None, sets: Sequence[str] = (), num_samples: int = 500,
                   particles: Optional[int] = None, metrics: Optional[Sequence[str]] = None,
                   metric_options: Optional[Dict[str, Dict[str, Any]]] = None, device: str = "cpu",
                   eval_batch_size: int = 32, generations: int = 8, echo: Callable[..., None] = click.echo,
                   tty: Optional[bool] = None, calibrate_fn=None) -> Dict[str, Any]:
    """Train (or reuse, or resume), evaluate and tabulate ``models`` on ``dataset``; return the
    summary written to ``OUT/table1.json``. Bad input raises :class:`click.UsageError` before
    anything is trained; Ctrl-C raises :class:`ComparisonInterrupted`; a model whose training or
    evaluation fails is reported in the table (status "failed") and the others go on."""
    names = parse_models(models)
    out = Path(out) if out is not None else Path("runs") / f"compare-{dataset}"
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out}: exists and is not a directory")
    common, own = split_sets(sets, names)
    metric_options = metric_options or {}
    entries = resolve_entries(names, dataset, out, dict(flags or {}), common, own, metrics, echo)
    status = Status(names, echo, tty)
    for e in entries:  # a run directory of other settings is bad input, found before any model trains
        check_run_dir(e)
    plan = plan_steps(entries, out, dataset, device, steps, budget_minutes, status, calibrate_fn)
    for e in entries:
        run_state(e, e.steps)
    echo(f"comparing {len(entries)} model{'s' if len(entries) > 1 else ''} on {dataset} | "
         + (f"budget {plan['budget_minutes']:g} min each" if plan.get("budget_minutes") is not None
            else f"steps {', '.join(str(n) for n in sorted({e.steps for e in entries}))}")
         + f" | device {device} | {num_samples} test scenes | out {out}")
    rows: List[Dict[str, Any]] = []
    pictures: List[Tuple[str, Any]] = []
    for e in entries:
        row: Dict[str, Any] = dict(name=e.name, recipe=e.recipe.name, overrides=e.overrides, steps=e.steps,
                                   metrics=e.metrics, status="failed", run_dir=str(e.run_dir))
        if e.calibration:
            row["seconds_per_step_calibrated"] = e.calibration["seconds_per_step"]
        rows.append(row)
        checkpoint, how = train(e, device, status)
        if checkpoint is None:
            row["error"] = how
            status.done(e.name, f"FAILED: {how.splitlines()[0]}")
            status.note(how)
            continue
        row["checkpoint"] = str(checkpoint)
        status.show(e.name, f"{how} {e.steps}/{e.steps}; evaluating {', '.join(e.metrics)} on {num_samples} test scenes",
                    "evaluating")
        try:
            report, reused = evaluate_entry(e, checkpoint, e.steps, num_samples, particles, metric_options, device,
                                            eval_batch_size)
            info = restore_summary(checkpoint, device, generations)
            row["test_digest"] = scenes_digest(e.recipe, info["config"], report["num_samples"])
        except KeyboardInterrupt:
            raise ComparisonInterrupted(f"interrupted while evaluating {e.name}") from None
        except Exception as err:  # one model's evaluation must not lose the others'
            trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            (e.run_dir / "eval.error.txt").write_text(trace)
            row["error"] = f"evaluation failed: {type(err).__name__}: {err} (traceback in {e.run_dir / 'eval.error.txt'})"
            status.done(e.name, f"FAILED: {row['error']}")
            continue
        (e.run_dir / "eval.error.txt").unlink(missing_ok=True)
        res = report["results"]
        row.update(status="done", results={k: v for k, v in res.items() if not isinstance(v, (dict, list))},
                   eval=str(e.run_dir / EVAL_JSON), eval_reused=reused, num_scenes=report["num_samples"],
                   parameters=info["parameters"], train_seconds=info["train_seconds"],
                   train_minutes=None if info["train_seconds"] is None else info["train_seconds"] / 60)
        if info["generations"] is not None:
            pictures.append((e.name, info["generations"]))
        status.done(e.name, f"{how} {e.steps} steps; evaluation {'reused' if reused else 'done'}: "
                            + "  ".join(f"{METRIC_COLUMNS.get(m, m).split(' ')[0]} {_fmt(m, res)}" for m in e.metrics))
    digests = {r["test_digest"] for r in rows if r.get("test_digest")}
    if len(digests) > 1:
        status.note("warning: the models were evaluated on different held-out scenes (their test splits differ: "
                    "check seed, num_val, image_size); see test_digest in table1.json")
    summary = dict(dataset=dataset, split="test", num_samples=num_samples, particles=particles,
                   metrics=ordered_metrics(metrics), metric_options=_canonical(metric_options), device=str(device),
                   budget_minutes=plan.get("budget_minutes"), steps=plan.get("steps"), out=str(out),
                   same_test_scenes=len(digests) <= 1, models=rows,
                   paper={n: dict(label=v[0], **{"s-acc": v[1], "d-steps": v[2], "ll": v[3]}) for n, v in PAPER_TABLE1.items()},
                   paper_note="GNM supplement Table 1, MNIST-4-10 at 128x128; LL not comparable across resolutions")
    from inference.evaluate import _jsonable

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / TABLE_JSON, json.dumps(_jsonable(summary), indent=2) + "\n")
    atomic_write_text(out / TABLE_MD, table_markdown(summary))
    written = [out / TABLE_MD, out / TABLE_JSON]
    if pictures:
        written.append(draw_generations(pictures, out / GENERATIONS_PNG,
                                        f"Generations, {dataset} ({generations} per model)"))
    echo("wrote " + ", ".join(str(p) for p in written))
    summary["written"] = [str(p) for p in written]
    return summary
