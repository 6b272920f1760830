"""The model-agnostic training loop: a recipe's model, guide, loss and data; the trainer's run dir,
logs, checkpoints, exact resume, validation, figures and Ctrl-C handling.

Order of events in a run (``step`` = optimiser updates done; the update with index ``s`` uses
schedules at ``s``)::

    clear param store, seed(seed), recipe.build, recipe.make_optimizer, recipe.make_scheduler,
    recipe.make_dataset("train"), recipe.make_dataset("val")   [resume: load states and RNGs]
    checkpoint at step 0 (new runs)
    repeat until step == steps:
        images = next batch; loss, logs = recipe.loss(model, guide, images, step, config)
        backward; clip (recipe.grad_clip_norm); optimizer.step(); scheduler.step() (not plateau)
        step += 1
        log line          if step % log_every == 0
        validation        if val_every and step % val_every == 0   (plateau scheduler stepped here)
        figures           if figures_every and step % figures_every == 0
        checkpoint        if ckpt_every and step % ckpt_every == 0
    at the end: validation and figures (unless just done), final checkpoint, loss.png

Validation and figures run under their own fixed seed with the training RNG states saved and
restored around them, so they never change the training numbers.

A non-finite loss, a non-finite parameter after an update, or a distribution given invalid
parameters (Pyro's validation error) stops the run with :class:`TrainingError`; nothing is
written then, so the newest checkpoint (at worst the one of step 0) is the last good state, and
``--resume --amend --lr X`` continues from it. Ctrl-C checkpoints the state after the last
completed step and draws its figures.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from inference.training import checkpoint as ckpt_mod
from inference.training.config import ConfigError
from inference.training.data import BatchStream, fixed_batch, iterate_fixed
from inference.training.distributed import Ranks, data_parallel, rank_seed
from inference.training.files import atomic_write_text
from inference.training.logs import JsonlLog, plot_losses, plot_metrics
from inference.training.rng import get_rng_state, preserved_rng, seed_all, set_rng_state
from inference.training.rundir import RunDir
from inference.training import tensorboard

#: loss.png is redrawn at a checkpoint only when this many seconds passed since the last drawing
PLOT_EVERY_S = 30.0
#: seeds of the validation and figure blocks, offset from the run's seed
VAL_SEED_OFFSET = 1_000_003
FIGURES_SEED_OFFSET = 2_000_003
#: the first line of the ValueError Pyro's validation raises for invalid distribution arguments
INVALID_ARGUMENT = re.compile(r"Expected parameter (\w+) .* of distribution (\w+).* but found invalid values")


class TrainingError(Exception):
    """Training could not go on (a non-finite loss, a recipe breaking the contract, ...)."""


class Interrupted(Exception):
    """Ctrl-C: the run stopped at ``step``; ``checkpoint`` is where it was saved (or None)."""

    def __init__(self, step: int, checkpoint: Optional[Path]):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint = step, checkpoint


def library_versions() -> Dict[str, str]:
    import pyro

    try:
        own = importlib.metadata.version("pyro-scenes")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            import tomllib

            own = tomllib.loads(pyproject.read_text())["project"]["version"]
        except Exception:
            pass
    return {"pyro_scenes": str(own), "torch": str(torch.__version__), "pyro": str(pyro.__version__)}


def unique_parameters(*modules: torch.nn.Module) -> List[torch.nn.Parameter]:
    """Parameters of all modules in order, each tensor once (a guide may share modules with the model)."""
    seen, out = set(), []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _float_logs(logs) -> Dict[str, float]:
    out = {}
    for k, v in (logs or {}).items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module):
    """Put ``modules`` in eval mode for a block, then back in the modes they had."""
    before = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(modules, before):
            m.train(training)


def all_finite(params: List[torch.Tensor]) -> bool:
    """True when no parameter holds a NaN or an infinity (one device sync)."""
    return bool(torch.isfinite(torch.stack([p.detach().abs().amax() for p in params if p.numel()])).all())


@dataclass
class Window:
    """Running sums of the losses since the last log line (saved in checkpoints)."""

    n: int = 0
    loss: float = 0.0
    logs: Dict[str, float] = field(default_factory=dict)
    time: float = 0.0

    def add(self, loss: float, logs: Dict[str, float], seconds: float) -> None:
        self.n += 1
        self.loss += loss
        self.time += seconds
        for k, v in logs.items():
            self.logs[k] = self.logs.get(k, 0.0) + v

    def state(self) -> Dict[str, Any]:
        return {"n": self.n, "loss": self.loss, "logs": dict(self.logs), "time": self.time}

    @classmethod
    def from_state(cls, s: Optional[Dict[str, Any]]) -> "Window":
        return cls(**s) if s else cls()


class Trainer:
    """Build with :meth:`prepare` (no files touched), then :meth:`run` (creates the run dir)."""

    def __init__(self, recipe, config: Dict[str, Any], device: torch.device, out: Path,
                 resume: Optional[Dict[str, Any]] = None, echo: Callable[[str], None] = print,
                 progress: Optional[bool] = None, ranks: Ranks = Ranks()):
        self.recipe, self.config, self.device = recipe, dict(config), torch.device(device)
        self.run_dir = RunDir(Path(out))
        self.resume_ckpt = resume
        #: this process's place in a torchrun job (inference.training.distributed); rank 0 writes the files
        self.ranks = ranks
        self.echo = echo if ranks.is_main else (lambda *_: None)
        no_tty = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
        self.show_bar = progress if progress is not None else not (no_tty or os.environ.get("CI"))
        self.show_bar = self.show_bar and ranks.is_main
        #: the loss as DistributedDataParallel(LossModule) on several ranks; None: recipe.loss directly
        self.loss_module = None
        #: TensorBoard copy of the logs (``tensorboard`` setting, rank 0); None when off
        self.tb: Optional[tensorboard.TensorBoardLog] = None
        self.step = 0
        self.model = self.guide = self.optimizer = self.scheduler = self.clip = None
        self.train_set = self.val_set = self.stream = None
        self.params: List[torch.nn.Parameter] = []
        self.window = Window()
        self.elapsed = 0.0
        #: (RNG states, data position) after the last completed step; None inside an update
        self._snapshot = None
        self._saved_at = self._val_at = self._fig_at = -1
        self._last_figures: List[Path] = []
        self._figure_batch = None
        self._verified_save = False
        self._checked_param_store = False
        self._plotted_at = -float("inf")
        self._stop_requested = False
        self._previous_determinism = None

    # ------------------------------------------------------------------ setup
    def prepare(self) -> "Trainer":
        """Build model, guide, optimiser, scheduler and data (and load a checkpoint when resuming)."""
        import pyro

        cfg = self.config
        if cfg.get("tensorboard") and not tensorboard.available():
            raise ConfigError('--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]" '
                              '(or leave it out: log.jsonl and val.jsonl hold the same numbers)')
        self._set_determinism(bool(cfg.get("deterministic")))
        pyro.clear_param_store()
        seed_all(cfg["seed"])
        self.model, self.guide = self.recipe.build(cfg, self.device)
        self.params = unique_parameters(self.model, self.guide)
        if not self.params:
            raise TrainingError(f"recipe {self.recipe.name!r}: model and guide have no parameters after build()")
        self.optimizer = self.recipe.make_optimizer(self.params, cfg)
        self.scheduler = self.recipe.make_scheduler(self.optimizer, cfg)
        self.clip = self.recipe.grad_clip_norm(cfg)
        self.train_set = self._dataset("train")
        self.val_set = self._dataset("val")
        world = self.ranks.world_size
        if len(self.train_set) < cfg["batch_size"] * world:
            per_rank = f" on each of {world} ranks" if world > 1 else ""
            raise ConfigError(f"the {cfg['dataset']!r} training set has {len(self.train_set)} items, fewer "
                              f"than one batch (--batch-size {cfg['batch_size']}{per_rank})")
        data_state = None
        if self.resume_ckpt is not None:
            data_state = self._load_resumed(self.resume_ckpt)
        if self.ranks.distributed:
            if self.ranks.rank > 0:  # each rank draws its own noise; rank 0 keeps the run's seed
                seed_all(rank_seed(cfg["seed"], self.ranks.rank))
            self.loss_module = data_parallel(self.model, self.guide, self.recipe.loss, cfg, self.device)
        self.stream = BatchStream(self.train_set, cfg["batch_size"], cfg["seed"], cfg["workers"], data_state,
                                  self.ranks.rank, world, keys=self.recipe.batch_keys(cfg))
        return self

    def _dataset(self, split: str):
        """``recipe.make_dataset``; a path it cannot write (a cache under a file, ...) is bad input."""
        try:
            return self.recipe.make_dataset(self.config, split)
        except OSError as e:
            where = str(e.filename or "")
            keys = [k for k, v in self.config.items() if isinstance(v, str) and v and where.startswith(v)]
            setting = f"--set {keys[0]}={self.config[keys[0]]}: " if keys else ""
            raise ConfigError(f"{setting}cannot make the {split} data: {e.strerror or e}: {where}") from None

    def _load_resumed(self, ck: Dict[str, Any]) -> Optional[Dict[str, int]]:
        """Load the checkpoint's states into the built objects; return its data position."""
        saved_world = int(ck.get("world_size", 1))
        if saved_world != self.ranks.world_size:
            raise ConfigError(f"the checkpoint was written by {saved_world} rank(s) and this run has "
                              f"{self.ranks.world_size}: the data order and noise could not continue exactly; "
                              f"resume with the same number of processes")
        ckpt_mod.load_module_states(self.model, self.guide, ck)
        if ck.get("optimizer_state") is not None:
            self.optimizer.load_state_dict(ck["optimizer_state"])
        if self.scheduler is not None and ck.get("scheduler_state") is not None:
            self.scheduler.load_state_dict(ck["scheduler_state"])
        self.step = self._saved_at = int(ck["step"])
        self._apply_amended_lr(self.config)
        trainer_state = ck.get("trainer") or {}
        own = (trainer_state.get("ranks") or [{}])[self.ranks.rank] if self.ranks.distributed else {}
        self.window = Window.from_state(own.get("window", trainer_state.get("window")))
        self.elapsed = float(trainer_state.get("elapsed", 0.0))
        return ck.get("data")

    def _apply_amended_lr(self, cfg) -> None:
        """An ``--amend``-ed lr at this step replaces the one restored with the optimiser's state."""
        for change in cfg.get("amendments", ()):
            if change["key"] == "lr" and change["step"] == self.step:
                for group in self.optimizer.param_groups:
                    group["lr"] = change["to"]
                    if "initial_lr" in group:
                        group["initial_lr"] = change["to"]

    def _set_determinism(self, on: bool) -> None:
        """Deterministic kernels for the run (process-wide in torch; :meth:`close` restores the previous mode)."""
        if self._previous_determinism is None:
            self._previous_determinism = (torch.are_deterministic_algorithms_enabled(),
                                          torch.is_deterministic_algorithms_warn_only_enabled(),
                                          torch.backends.cudnn.benchmark)
        if on:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.use_deterministic_algorithms(False)

    def close(self) -> None:
        """Stop data workers and restore torch's previous deterministic-algorithms mode (idempotent)."""
        if self.stream is not None:
            self.stream.close()
        if self.tb is not None:
            self.tb.close()
        if self._previous_determinism is not None:
            enabled, warn_only, benchmark = self._previous_determinism
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            torch.backends.cudnn.benchmark = benchmark
            self._previous_determinism = None

    # ------------------------------------------------------------ checkpoints
    def state(self) -> Dict[str, Any]:
        """The checkpoint of the state after the last completed step. On several ranks (a collective:
        every rank calls it) it adds each rank's RNG state and log window, and the world size."""
        rng, data = self._snapshot
        trainer, extra = {"elapsed": self.elapsed, "window": self.window.state()}, {}
        if self.ranks.distributed:
            per_rank = self.ranks.gather({"rng": rng, "window": trainer["window"]})
            trainer["ranks"] = [{"window": r["window"]} for r in per_rank]
            extra = {"rank_rng": [r["rng"] for r in per_rank], "world_size": self.ranks.world_size}
        return {
            "model": self.recipe.name,
            "dataset": self.config["dataset"],
            "step": self.step,
            "config": self.config,
            "model_state": ckpt_mod.module_state(self.model),
            "guide_state": ckpt_mod.module_state(self.guide),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng,
            "data": data,
            "trainer": trainer,
            "versions": library_versions(),
            "device": str(self.device),
            **extra,
        }

    def save(self, final: bool = False) -> Path:
        """Checkpoint (atomically), prune to ``keep``, and redraw loss.png (at most every
        :data:`PLOT_EVERY_S` seconds, and always when ``final``). Every rank calls it; rank 0 writes."""
        state = self.state()
        if not self.ranks.is_main:
            self._saved_at = self.step
            return self.run_dir.ckpt_dir / ckpt_mod.checkpoint_name(self.step)
        try:
            path = ckpt_mod.save_checkpoint(self.run_dir.ckpt_dir, state)
        except ckpt_mod.CheckpointError as e:
            raise TrainingError(str(e)) from None
        if not self._verified_save:  # once per run: the file must load back weights-only
            try:
                ckpt_mod.load_checkpoint(path)
            except ckpt_mod.CheckpointError as e:
                raise TrainingError(f"the checkpoint just written does not load back ({e}); a recipe's state "
                                    f"(optimizer, scheduler, modules) holds objects torch.load(weights_only=True) "
                                    f"refuses") from None
            self._verified_save = True
        ckpt_mod.prune_checkpoints(self.run_dir.ckpt_dir, self.config["keep"])
        self._saved_at = self.step
        if final or time.monotonic() - self._plotted_at >= PLOT_EVERY_S:
            self.plot()
        return path

    def _checkpoint_now(self) -> Path:
        """The checkpoint of the current step, written unless it already is; loss.png redrawn."""
        if self._saved_at != self.step:
            return self.save(final=True)
        self.plot()
        return self.run_dir.ckpt_dir / ckpt_mod.checkpoint_name(self.step)

    def plot(self) -> None:
        if not self.ranks.is_main:
            return
        try:
            plot_losses(self.run_dir.path)
            plot_metrics(self.run_dir.path)
        except Exception as e:  # a figure must never stop training
            self._warn(f"could not draw loss.png / metrics.png: {e}")
        self._plotted_at = time.monotonic()

    # ------------------------------------------------------------- evaluation
    def validate(self) -> Optional[float]:
        """Mean ``recipe.eval_loss`` over the first ``val_items`` validation items (fixed noise)."""
        if len(self.val_set) == 0:
            return None
        cfg = self.config
        total, n = 0.0, 0
        with eval_mode(self.model, self.guide), preserved_rng(cfg["seed"] + VAL_SEED_OFFSET), self._diverges():
            for batch in iterate_fixed(self.val_set, cfg["val_items"], cfg["batch_size"], self.recipe.batch_keys(cfg)):
                loss = self.recipe.eval_loss(self.model, self.guide, _to_device(batch, self.device), self.step, cfg)
                size = len(batch["image"] if isinstance(batch, dict) else batch)
                total += float(loss) * size
                n += size
        return total / n if n else None

    def validation_metrics(self) -> Dict[str, Any]:
        """The recipe's learning metrics on the validation set (fixed noise); {} if it has none."""
        if len(self.val_set) == 0:
            return {}
        try:
            with eval_mode(self.model, self.guide), preserved_rng(self.config["seed"] + VAL_SEED_OFFSET):
                metrics = self.recipe.validation_metrics(self.model, self.guide, self.val_set, self.step, self.config)
            return metrics or {}
        except Exception:
            self._warn(f"validation metrics at step {self.step} failed (training goes on):\n{traceback.format_exc()}")
            return {}

    def figures(self) -> List[Path]:
        """The recipe's figures of a fixed validation batch at this step (fixed noise)."""
        self._fig_at = self.step
        if len(self.val_set) == 0 or not self.ranks.is_main:
            return []
        try:
            if self._figure_batch is None:
                self._figure_batch = _to_device(fixed_batch(self.val_set, self.config["batch_size"]), self.device)
            with eval_mode(self.model, self.guide), preserved_rng(self.config["seed"] + FIGURES_SEED_OFFSET), \
                    torch.no_grad():
                paths = self.recipe.figures(self.model, self.guide, self._figure_batch,
                                            self.run_dir.figures_dir, self.step)
            self._last_figures = [Path(p) for p in (paths or [])]
            if self.tb is not None:
                self.tb.images(self.step, self._last_figures)
        except Exception:
            self._warn(f"figures at step {self.step} failed (training goes on):\n{traceback.format_exc()}")
            self._last_figures = []
        return self._last_figures

    def _warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ divergence
    def _diverged(self, what: str) -> TrainingError:
        """The error that stops a diverging run, pointing at the newest checkpoint (the last good state)."""
        path = ckpt_mod.find_checkpoint(self.run_dir.path)
        lr = self.optimizer.param_groups[0]["lr"]
        return TrainingError(f"{what}; stopped. The last good checkpoint is {path}; continue from it with a "
                             f"lower learning rate: python -m inference.svi --resume --amend --lr {lr / 10:g} "
                             f"--out {self.run_dir.path} (--amend --set KEY=VALUE changes other settings)")

    @contextlib.contextmanager
    def _diverges(self):
        """Turn Pyro's validation error for invalid (NaN, infinite) distribution arguments into :meth:`_diverged`."""
        try:
            yield
        except ValueError as e:
            found = INVALID_ARGUMENT.search(str(e))
            if found is None:
                raise
            raise self._diverged(f"the {found.group(1)} of a {found.group(2)} distribution became invalid "
                                 f"(NaN or infinite) at step {self.step}") from None

    # ------------------------------------------------------------------- loop
    def _check_loss(self, loss) -> float:
        """The loss as a float; the recipe must return a finite scalar tensor that requires grad."""
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
            raise TrainingError(f"recipe {self.recipe.name!r}: loss() must return a scalar tensor that "
                                f"requires grad, got {type(loss).__name__} "
                                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if not self._checked_param_store:
            self._check_param_store()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise self._diverged(f"the loss is {value} at step {self.step}")
        return value

    def _check_param_store(self) -> None:
        """Once per run: every parameter in Pyro's param store must belong to the model or guide."""
        import pyro

        ids = {id(p) for p in self.params}
        stray = [name for name, p in pyro.get_param_store().named_parameters()
                 if p.requires_grad and id(p) not in ids]
        if stray:
            raise TrainingError(f"recipe {self.recipe.name!r}: parameters in Pyro's param store that are "
                                f"not parameters of the model or guide modules (they would be neither "
                                f"trained nor checkpointed): {', '.join(sorted(stray)[:10])}")
        self._checked_param_store = True

    def _log(self, reset: bool = True) -> None:
        """The log line of the window; on several ranks (every rank calls it) the loss and logs are
        the means over the ranks, i.e. over the global batch."""
        w = self.window
        if w.n == 0:
            return
        loss, logs = w.loss / w.n, {k: v / w.n for k, v in w.logs.items()}
        if self.ranks.distributed:
            means = self.ranks.gather((loss, logs))
            loss = sum(m[0] for m in means) / len(means)
            logs = {k: sum(m[1].get(k, 0.0) for m in means) / len(means) for k in logs}
        if reset:
            self.window = Window()
        if not self.ranks.is_main:
            return
        record = {
            "step": self.step,
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": round(self.elapsed, 3),
            "sec_per_step": w.time / w.n,
            "logs": logs,
        }
        JsonlLog(self.run_dir.log_path).write(record)
        if self.tb is not None:
            self.tb.scalars(self.step, {"loss": loss, "lr": record["lr"], "sec_per_step": record["sec_per_step"],
                                        "logs": logs}, prefix="train")
        if not self.show_bar:
            self.echo(f"step {self.step}/{self.config['steps']}  loss {record['loss']:.6g}  "
                      f"lr {record['lr']:.3g}  {record['sec_per_step']:.3g} s/step")

    def _val(self, step_scheduler: bool, final: bool = False) -> Optional[float]:
        """Validation on rank 0; its loss reaches every rank (all step the plateau scheduler alike)."""
        t0 = time.perf_counter()
        self._val_at = self.step
        val = self.ranks.broadcast(self.validate() if self.ranks.is_main else None)
        if val is None:
            return None
        if step_scheduler and is_plateau(self.scheduler):
            self.scheduler.step(val)
        if not self.ranks.is_main:
            return val
        metrics = self.validation_metrics()
        record = {"step": self.step, "val_loss": val, "lr": self.optimizer.param_groups[0]["lr"],
                  "time": round(self.elapsed, 3), "seconds": round(time.perf_counter() - t0, 3)}
        if metrics:
            record["metrics"] = metrics
            self.echo(f"validation at step {self.step}: " + "  ".join(
                f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, (int, float))))
        if final:
            record["final"] = True
        JsonlLog(self.run_dir.val_path).write(record)
        if self.tb is not None:
            self.tb.scalars(self.step, {"loss": val, "metrics": metrics}, prefix="val")
            self.tb.flush()
        return val

    def _on_sigint(self, signum, frame) -> None:
        self._stop_requested = True
        self.echo(f"\ninterrupt: finishing step {self.step + 1}, then writing a checkpoint "
                  f"(Ctrl-C again to stop at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextlib.contextmanager
    def _sigint_finishes_the_step(self):
        """The first Ctrl-C stops the run after the current step; the second stops it at once. Left
        alone off the main thread and when SIGINT is ignored (a process started with nohup or &)."""
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _start_files(self) -> None:
        """Make the run directory, drop what a killed run left (temporary files, log lines after
        the checkpoint resumed from), write config.json and, for a new run, the step-0 checkpoint."""
        import json

        rd = self.run_dir
        if self.ranks.is_main:
            rd.path.mkdir(parents=True, exist_ok=True)
            rd.ckpt_dir.mkdir(exist_ok=True)
            rd.remove_temporaries()
            atomic_write_text(rd.config_path, json.dumps(self.config, indent=2, sort_keys=True) + "\n")
            if self.resume_ckpt is not None:
                JsonlLog(rd.log_path).truncate_after(self.step)
                JsonlLog(rd.val_path).truncate_after(self.step)
            if self.config.get("tensorboard"):
                # resumed: hide what the killed run wrote after its checkpoint, as the .jsonl files do
                purge = self.step + 1 if self.resume_ckpt is not None else None
                self.tb = tensorboard.TensorBoardLog(rd.path, purge_step=purge)
                self.tb.hparams(self.config, {"val/loss": None})
        if self.resume_ckpt is None:
            self.save()

    def run(self) -> Dict[str, Any]:
        """Train to ``config['steps']``; return paths and numbers of the finished run.

        Raises :class:`Interrupted` after Ctrl-C (a checkpoint has been written) and
        :class:`TrainingError` when the run diverges (the newest checkpoint is the last good
        state). Calls :meth:`close` when done.
        """
        import pyro

        if self.model is None:
            self.prepare()
        try:
            with pyro.validation_enabled(True):  # invalid distribution arguments raise, for :meth:`_diverges`
                return self._run()
        finally:
            self.close()

    def _run(self) -> Dict[str, Any]:
        if self.resume_ckpt is not None:
            ck = self.resume_ckpt
            rng = ck["rank_rng"][self.ranks.rank] if self.ranks.distributed and "rank_rng" in ck else ck.get("rng")
            if rng is not None:  # absent from an unpacked pretrained model: the seed's noise then
                set_rng_state(rng)
        self._snapshot = (get_rng_state(), self.stream.state())
        self._start_files()
        self._announce()
        try:
            with self._sigint_finishes_the_step(), self._progress_bar() as bar:
                while self.step < self.config["steps"]:
                    self._train_step(bar)
                    self._after_step()
                    if self.ranks.any(self._stop_requested):  # every rank stops after the same step
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise Interrupted(self.step, self._stop_interrupted()) from None
        finally:
            self.stream.close()
        return self._finish()

    def _announce(self) -> None:
        resumed = " (resumed)" if self.resume_ckpt is not None else ""
        self.echo(f"training {self.recipe.name} on {self.config['dataset']} | device {self.device} | "
                  f"{sum(p.numel() for p in self.params):,} parameters | steps {self.step} -> "
                  f"{self.config['steps']}{resumed} | out {self.run_dir.path}")

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.config["steps"], initial=self.step, unit="step", desc=self.recipe.name,
                    dynamic_ncols=True, disable=not self.show_bar, file=sys.stderr)

    def _train_step(self, bar) -> None:
        """One optimiser update. Parameters and optimiser are untouched until ``optimizer.step()``, so
        until then :meth:`state` (the snapshot after the previous step) is exact."""
        t0 = time.perf_counter()
        batch = _to_device(next(self.stream), self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self._diverges():
            if self.loss_module is not None:  # DDP: backward averages the gradients over the ranks
                loss, logs = self.loss_module(batch, self.step)
            else:
                loss, logs = self.recipe.loss(self.model, self.guide, batch, self.step, self.config)
        value = self._check_loss(loss)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self._snapshot = None  # a Ctrl-C from here until the step is counted leaves no exact state
        self.optimizer.step()
        if not all_finite(self.params):
            raise self._diverged(f"the update of step {self.step} made a parameter NaN or infinite")
        if self.scheduler is not None and not is_plateau(self.scheduler):
            self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        self.window.add(value, _float_logs(logs), seconds)
        self._snapshot = (get_rng_state(), self.stream.state())
        bar.update(1)
        bar.set_postfix_str(f"loss {value:.5g}", refresh=False)

    def _after_step(self) -> None:
        """Log line, validation, figures and checkpoint, each when its interval divides the step."""
        cfg = self.config
        if self.step % cfg["log_every"] == 0:
            self._log()
        if self._due(cfg["val_every"]):
            self._val(step_scheduler=True)
        if self._due(cfg["figures_every"]):
            self.figures()
        if self._due(cfg["ckpt_every"]):
            self.save()

    def _due(self, every: int) -> bool:
        return bool(every) and self.step % every == 0

    def _stop_interrupted(self) -> Optional[Path]:
        """After Ctrl-C: checkpoint the state after the last completed step and draw its figures."""
        if self._snapshot is None:
            self._warn(f"interrupted inside the optimiser update of step {self.step}; no checkpoint written "
                       f"(the parameters may be half-updated)")
            return None
        path = self._checkpoint_now()
        if self._fig_at != self.step:
            with contextlib.suppress(KeyboardInterrupt):
                self.figures()
        return path if self.ranks.is_main else None

    def _finish(self) -> Dict[str, Any]:
        """The end: last log window, validation and figures (unless just done), final checkpoint."""
        # a partial log window is written but kept in the checkpoint, so a later --resume with
        # more steps logs the same windows as one longer run
        if self.window.n > 0:
            self._log(reset=False)
        val = self._val(step_scheduler=False, final=True) if self._val_at != self.step else None
        if self._fig_at != self.step:
            self.figures()
        path = self._checkpoint_now()
        rd = self.run_dir
        figures = sorted(p for p in rd.figures_dir.rglob("*") if p.is_file()) if rd.figures_dir.exists() else []
        self.echo(f"done: step {self.step} | checkpoint {path} | log {rd.log_path} | "
                  f"figures {rd.figures_dir} ({len(figures)} files) | loss curve {rd.path / 'loss.png'}")
        return {"step": self.step, "checkpoint": path, "log": rd.log_path, "val_log": rd.val_path,
                "figures": self._last_figures, "run_dir": rd.path, "val_loss": val}
