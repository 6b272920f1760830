"""The model-agnostic training loop: a recipe's model, guide, loss and data; the trainer's run dir,
logs, checkpoints, exact resume, validation, figures and Ctrl-C handling.

Order of events in a run (``step`` = optimiser updates done; the update with index ``s`` uses
schedules at ``s``)::

    clear param store, seed(seed), recipe.build, recipe.make_optimizer, recipe.make_scheduler,
    recipe.make_dataset("train"), recipe.make_dataset("val")   [resume: load states and RNGs]
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
"""
from __future__ import annotations

import importlib.metadata
import math
import os
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
from inference.training.data import BatchStream, fixed_batch, iterate_fixed
from inference.training.files import atomic_write_text
from inference.training.logs import JsonlLog, plot_losses, plot_metrics
from inference.training.rng import get_rng_state, preserved_rng, seed_all, set_rng_state
from inference.training.rundir import RunDir

#: loss.png is redrawn at a checkpoint only when this many seconds passed since the last drawing
PLOT_EVERY_S = 30.0
#: seeds of the validation and figure blocks, offset from the run's seed
VAL_SEED_OFFSET = 1_000_003
FIGURES_SEED_OFFSET = 2_000_003


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
                 progress: Optional[bool] = None):
        self.recipe, self.config, self.device = recipe, dict(config), torch.device(device)
        self.run_dir = RunDir(Path(out))
        self.resume_ckpt = resume
        self.echo = echo
        self.progress = progress
        self.step = 0
        self._prepared = False

    # ------------------------------------------------------------------ setup
    def prepare(self) -> "Trainer":
        """Build model, guide, optimiser, scheduler and data (and load a checkpoint when resuming)."""
        import pyro

        cfg = self.config
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
        self.train_set = self.recipe.make_dataset(cfg, "train")
        self.val_set = self.recipe.make_dataset(cfg, "val")
        if len(self.train_set) < cfg["batch_size"]:
            raise TrainingError(f"the {cfg['dataset']!r} training set has {len(self.train_set)} items, fewer "
                                f"than one batch (--batch-size {cfg['batch_size']})")
        self.window = Window()
        self.elapsed = 0.0
        data_state = None
        self._rng_to_restore = None
        if self.resume_ckpt is not None:
            ck = self.resume_ckpt
            ckpt_mod.load_module_states(self.model, self.guide, ck)
            if ck.get("optimizer_state") is not None:
                self.optimizer.load_state_dict(ck["optimizer_state"])
            if self.scheduler is not None and ck.get("scheduler_state") is not None:
                self.scheduler.load_state_dict(ck["scheduler_state"])
            self.step = int(ck["step"])
            self._apply_amended_lr(cfg)
            data_state = ck.get("data")
            trainer_state = ck.get("trainer") or {}
            self.window = Window.from_state(trainer_state.get("window"))
            self.elapsed = float(trainer_state.get("elapsed", 0.0))
            self._rng_to_restore = ck.get("rng")
        self.stream = BatchStream(self.train_set, cfg["batch_size"], cfg["seed"], cfg["workers"], data_state)
        self.n_params = sum(p.numel() for p in self.params)
        self._figure_batch = None
        self._verified_save = False
        self._plotted_at = -float("inf")
        self._prepared = True
        return self

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
        if getattr(self, "_previous_determinism", None) is None:
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
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.close()
        previous = getattr(self, "_previous_determinism", None)
        if previous is not None:
            enabled, warn_only, benchmark = previous
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            torch.backends.cudnn.benchmark = benchmark
            self._previous_determinism = None

    # ------------------------------------------------------------ checkpoints
    def state(self, rng=None, data=None) -> Dict[str, Any]:
        return {
            "model": self.recipe.name,
            "dataset": self.config["dataset"],
            "step": self.step,
            "config": self.config,
            "model_state": ckpt_mod.module_state(self.model),
            "guide_state": ckpt_mod.module_state(self.guide),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng if rng is not None else get_rng_state(),
            "data": data if data is not None else self.stream.state(),
            "trainer": {"elapsed": self.elapsed, "window": self.window.state()},
            "versions": library_versions(),
            "device": str(self.device),
        }

    def save(self, rng=None, data=None, final: bool = False) -> Path:
        """Checkpoint (atomically), prune to ``keep``, and redraw loss.png (at most every
        :data:`PLOT_EVERY_S` seconds, and always when ``final``)."""
        try:
            path = ckpt_mod.save_checkpoint(self.run_dir.ckpt_dir, self.state(rng, data))
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

    def plot(self) -> None:
        try:
            plot_losses(self.run_dir.path)
            plot_metrics(self.run_dir.path)
        except Exception as e:  # a figure must never stop training
            self._warn(f"could not draw loss.png / metrics.png: {e}")
        self._plotted_at = time.monotonic()

    # ------------------------------------------------------------- evaluation
    def _modes(self, training: bool):
        before = (self.model.training, self.guide.training)
        self.model.train(training)
        self.guide.train(training)
        return before

    def validate(self) -> Optional[float]:
        """Mean ``recipe.eval_loss`` over the first ``val_items`` validation items (fixed noise)."""
        if len(self.val_set) == 0:
            return None
        cfg = self.config
        before = self._modes(False)
        try:
            total, n = 0.0, 0
            with preserved_rng(cfg["seed"] + VAL_SEED_OFFSET):
                for images in iterate_fixed(self.val_set, cfg["val_items"], cfg["batch_size"]):
                    loss = self.recipe.eval_loss(self.model, self.guide, images.to(self.device), self.step, cfg)
                    total += float(loss) * len(images)
                    n += len(images)
        finally:
            self.model.train(before[0])
            self.guide.train(before[1])
        return total / n if n else None

    def validation_metrics(self) -> Dict[str, Any]:
        """The recipe's learning metrics on the validation set (fixed noise); {} if it has none."""
        if len(self.val_set) == 0:
            return {}
        before = self._modes(False)
        try:
            with preserved_rng(self.config["seed"] + VAL_SEED_OFFSET):
                return self.recipe.validation_metrics(self.model, self.guide, self.val_set, self.step, self.config) or {}
        except Exception:
            self._warn(f"validation metrics at step {self.step} failed (training goes on):\n{traceback.format_exc()}")
            return {}
        finally:
            self.model.train(before[0])
            self.guide.train(before[1])

    def figures(self) -> List[Path]:
        if len(self.val_set) == 0:
            return []
        before = self._modes(False)
        try:
            if self._figure_batch is None:
                self._figure_batch = _to_device(fixed_batch(self.val_set, self.config["batch_size"]), self.device)
            with preserved_rng(self.config["seed"] + FIGURES_SEED_OFFSET), torch.no_grad():
                paths = self.recipe.figures(self.model, self.guide, self._figure_batch,
                                            self.run_dir.figures_dir, self.step)
            return [Path(p) for p in (paths or [])]
        except Exception:
            self._warn(f"figures at step {self.step} failed (training goes on):\n{traceback.format_exc()}")
            return []
        finally:
            self.model.train(before[0])
            self.guide.train(before[1])

    def _warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------- loop
    def _check_loss(self, loss, first: bool) -> None:
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
            raise TrainingError(f"recipe {self.recipe.name!r}: loss() must return a scalar tensor that "
                                f"requires grad, got {type(loss).__name__} "
                                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if first:
            import pyro

            ids = {id(p) for p in self.params}
            stray = [name for name, p in pyro.get_param_store().named_parameters()
                     if p.requires_grad and id(p) not in ids]
            if stray:
                raise TrainingError(f"recipe {self.recipe.name!r}: parameters in Pyro's param store that are "
                                    f"not parameters of the model or guide modules (they would be neither "
                                    f"trained nor checkpointed): {', '.join(sorted(stray)[:10])}")

    def _log(self, reset: bool = True) -> None:
        w = self.window
        if w.n == 0:
            return
        record = {
            "step": self.step,
            "loss": w.loss / w.n,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": round(self.elapsed, 3),
            "sec_per_step": w.time / w.n,
            "logs": {k: v / w.n for k, v in w.logs.items()},
        }
        JsonlLog(self.run_dir.log_path).write(record)
        if not self._bar_enabled:
            self.echo(f"step {self.step}/{self.config['steps']}  loss {record['loss']:.6g}  "
                      f"lr {record['lr']:.3g}  {record['sec_per_step']:.3g} s/step")
        if reset:
            self.window = Window()

    def _val(self, step_scheduler: bool, final: bool = False) -> Optional[float]:
        t0 = time.perf_counter()
        val = self.validate()
        if val is None:
            return None
        if step_scheduler and is_plateau(self.scheduler):
            self.scheduler.step(val)
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
        self._val_at = self.step
        return val

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self._stop_requested = True
            self.echo(f"\ninterrupt: finishing step {self.step + 1}, then writing a checkpoint "
                      f"(Ctrl-C again to stop at once)")
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, handler)
        return previous

    def _start_files(self) -> None:
        rd = self.run_dir
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.ckpt_dir.mkdir(exist_ok=True)
        import json

        atomic_write_text(rd.config_path, json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        if self.resume_ckpt is not None:  # drop lines logged after the checkpoint we resume from
            JsonlLog(rd.log_path).truncate_after(self.step)
            JsonlLog(rd.val_path).truncate_after(self.step)

    def run(self) -> Dict[str, Any]:
        """Train to ``config['steps']``; return paths and numbers of the finished run.

        Raises :class:`Interrupted` after Ctrl-C (a checkpoint has been written) and
        :class:`TrainingError` on a non-finite loss (the last good state is checkpointed).
        Calls :meth:`close` when done.
        """
        if not self._prepared:
            self.prepare()
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> Dict[str, Any]:
        cfg, total = self.config, self.config["steps"]
        self._start_files()
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
        self._saved_at = self._val_at = self._fig_at = -1
        if self.resume_ckpt is not None:
            self._saved_at = self.step
        self._stop_requested = False
        no_tty = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
        self._bar_enabled = self.progress if self.progress is not None else not (no_tty or os.environ.get("CI"))
        start = self.step
        self.echo(f"training {self.recipe.name} on {cfg['dataset']} | device {self.device} | "
                  f"{self.n_params:,} parameters | steps {start} -> {total}"
                  f"{' (resumed)' if self.resume_ckpt is not None else ''} | out {self.run_dir.path}")
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="step", desc=self.recipe.name, dynamic_ncols=True,
                   disable=not self._bar_enabled, file=sys.stderr)
        previous_handler = self._install_sigint()
        phase, snapshot = "post", None
        last_figures: List[Path] = []
        try:
            while self.step < total:
                snapshot = (get_rng_state(), self.stream.state())
                phase = "pre"
                t0 = time.perf_counter()
                images = next(self.stream).to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                loss, logs = self.recipe.loss(self.model, self.guide, images, self.step, cfg)
                self._check_loss(loss, first=self.step == start)
                value = float(loss.detach())
                if not math.isfinite(value):
                    path = self.save(rng=snapshot[0], data=snapshot[1], final=True)
                    raise TrainingError(f"the loss is {value} at step {self.step}; stopped. The state before "
                                        f"this step is in {path} (try a lower --lr or gradient clipping)")
                loss.backward()
                if self.clip:
                    torch.nn.utils.clip_grad_norm_(self.params, self.clip)
                phase = "update"
                self.optimizer.step()
                if self.scheduler is not None and not is_plateau(self.scheduler):
                    self.scheduler.step()
                self.step += 1
                phase = "post"
                seconds = time.perf_counter() - t0
                self.elapsed += seconds
                self.window.add(value, _float_logs(logs), seconds)
                bar.update(1)
                bar.set_postfix_str(f"loss {value:.5g}", refresh=False)
                if self.step % cfg["log_every"] == 0:
                    self._log()
                if cfg["val_every"] and self.step % cfg["val_every"] == 0:
                    self._val(step_scheduler=True)
                if cfg["figures_every"] and self.step % cfg["figures_every"] == 0:
                    last_figures = self.figures()
                    self._fig_at = self.step
                if cfg["ckpt_every"] and self.step % cfg["ckpt_every"] == 0:
                    self.save()
                if self._stop_requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            path = None
            if phase == "pre":  # the step had not touched the parameters: save the state before it
                path = self.save(rng=snapshot[0], data=snapshot[1], final=True)
            elif phase == "post":
                path = (self.save(final=True) if self._saved_at != self.step
                        else ckpt_mod.find_checkpoint(self.run_dir.path))
            else:
                self._warn(f"interrupted inside the optimiser update of step {self.step}; no checkpoint written "
                           f"(the parameters may be half-updated)")
            raise Interrupted(self.step, path) from None
        finally:
            bar.close()
            self.stream.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        # the end: a partial log window is written but kept in the checkpoint, so a later
        # --resume with more steps logs the same windows as one longer run
        if self.window.n > 0:
            self._log(reset=False)
        val = None
        if self._val_at != self.step:
            val = self._val(step_scheduler=False, final=True)
        if self._fig_at != self.step:
            last_figures = self.figures()
        if self._saved_at != self.step:
            path = self.save(final=True)
        else:
            path = ckpt_mod.find_checkpoint(self.run_dir.path)
            self.plot()
        rd = self.run_dir
        figures = sorted(p for p in rd.figures_dir.rglob("*") if p.is_file()) if rd.figures_dir.exists() else []
        self.echo(f"done: step {self.step} | checkpoint {path} | log {rd.log_path} | "
                  f"figures {rd.figures_dir} ({len(figures)} files) | loss curve {rd.path / 'loss.png'}")
        return {"step": self.step, "checkpoint": path, "log": rd.log_path, "val_log": rd.val_path,
                "figures": last_figures, "run_dir": rd.path, "val_loss": val}
