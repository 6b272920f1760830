"""Train any registered model with stochastic variational inference.

    python -m inference.svi --model econ --dataset sprites-unique --steps 20000
    python -m inference.svi --model gnm --dataset mnist4 --set beta_g_end=2.0
    python -m inference.svi --model econ --resume --steps 40000      # continue runs/econ-sprites-unique

The command is model-agnostic: everything model-specific comes from the model's recipe
(``inference.recipes.get_recipe(name)``, contract in ``inference/recipes/base.py``). See
``docs/training.md``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional

import click

from datasets.errors import DatasetError
from inference.recipes.settings import FLAGS, flag_name
from inference.training import checkpoint as ckpt_mod
from inference.training.config import (
    RESERVED_KEYS, ConfigError, load_config_file, parse_set, resolve_config, resume_overrides,
    validate_trainer_config,
)
from inference.training.rundir import RunDir


def _model_names() -> str:
    try:
        from inference.recipes import RECIPES

        return ", ".join(sorted(RECIPES))
    except Exception:  # pragma: no cover
        return "see inference/recipes/__init__.py"


def _get_recipe(name: str):
    """Look the recipe up at call time (so tests and plugins can register their own)."""
    import inference.recipes as recipes

    try:
        return recipes.get_recipe(name)
    except ValueError as e:
        raise click.UsageError(f"--model: {e}") from None
    except Exception as e:  # ImportError, or a bug in the recipe's module
        raise click.ClickException(f"--model {name}: the recipe could not be loaded: {type(e).__name__}: {e}") from None


def _validate(recipe, config: Dict[str, Any]) -> None:
    try:
        validate_trainer_config(config)
        recipe.validate_config(config)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError(f"--device cuda: CUDA is not available here (torch {torch.__version__}); "
                               f"use --device cpu")
    return torch.device(name)


def _check_dataset(recipe, dataset: str) -> None:
    if dataset not in recipe.datasets:
        raise click.UsageError(f"--dataset: unknown dataset {dataset!r} for model {recipe.name!r}; "
                               f"choose one of {', '.join(recipe.datasets)}")


def plan_new(model: Optional[str], dataset: Optional[str], out: Optional[str],
             file_config: Dict[str, Any], flags: Dict[str, Any], sets: Dict[str, Any], file_label: str = "--config"):
    """Validate a new run; returns ``(recipe, config, out_path)``. Touches no file."""
    if model is None:
        raise click.UsageError("missing --model (one of: " + _model_names() + ")")
    if "model" in file_config and file_config["model"] != model:
        raise click.UsageError(f"{file_label} is for model {file_config['model']!r}, not --model {model!r}")
    recipe = _get_recipe(model)
    dataset = dataset or file_config.get("dataset") or (recipe.datasets[0] if recipe.datasets else None)
    if dataset is None:
        raise click.ClickException(f"model {model!r} declares no datasets")
    _check_dataset(recipe, dataset)
    try:
        config = resolve_config(recipe, dataset, file_config, flags, sets, file_label=file_label)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    _validate(recipe, config)
    out_path = Path(out) if out else Path("runs") / f"{model}-{dataset}"
    rd = RunDir(out_path)
    if out_path.exists() and not out_path.is_dir():
        raise click.UsageError(f"--out {out_path}: exists and is not a directory")
    if rd.holds_run():
        other = rd.read_config() or {}
        if other and (other.get("model"), other.get("dataset")) != (model, dataset):
            raise click.UsageError(
                f"--out {out_path} holds a different run ({rd.describe()}); nothing was changed. "
                f"Use a new --out")
        raise click.UsageError(f"--out {out_path} already holds a run ({rd.describe()}); nothing was changed. "
                               f"Use --resume to continue it, or a new --out")
    return recipe, config, out_path


def plan_resume(model: Optional[str], dataset: Optional[str], out: Optional[str], device,
                file_config: Dict[str, Any], flags: Dict[str, Any], sets: Dict[str, Any],
                file_label: str = "--config", amend: bool = False):
    """Validate a resumed run; returns ``(recipe, config, out_path, checkpoint_dict, checkpoint_path)``."""
    if out is None:
        if model is None:
            raise click.UsageError("--resume needs --out (or --model [--dataset] for runs/<model>-<dataset>)")
        if dataset is None:
            dataset = file_config.get("dataset") or (_get_recipe(model).datasets or (None,))[0]
        out_path = Path("runs") / f"{model}-{dataset}"
    else:
        out_path = Path(out)
    rd = RunDir(out_path)
    if not rd.holds_run():
        raise click.UsageError(f"--resume: {out_path} holds no run to resume (no config.json or checkpoints); "
                               f"leave out --resume to start one")
    try:
        path = ckpt_mod.find_checkpoint(rd.path)
        ck = ckpt_mod.load_checkpoint(path, map_location=device)
    except ckpt_mod.CheckpointError as e:
        hint = ""
        older = ckpt_mod.list_checkpoints(rd.ckpt_dir)[:-1]
        if older:
            hint = f" (older checkpoints: {', '.join(p.name for _, p in older)}; move the bad file away to resume from one)"
        if not ckpt_mod.list_checkpoints(rd.ckpt_dir):
            hint = (f" (the run stopped before its first checkpoint: delete {out_path} or use a new --out "
                    f"to start again)")
        raise click.ClickException(f"--resume: {e}{hint}") from None
    run_model, run_dataset = ck["model"], ck["dataset"]
    for flag, asked, have in (("--model", model, run_model), ("--dataset", dataset, run_dataset),
                              (f"{file_label}: model", file_config.get("model"), run_model),
                              (f"{file_label}: dataset", file_config.get("dataset"), run_dataset)):
        if asked is not None and asked != have:
            raise click.UsageError(f"{flag} {asked!r}: --out {out_path} holds a run of model {run_model!r} on "
                                   f"dataset {run_dataset!r}; nothing was changed. Use a new --out for another run")
    recipe = _get_recipe(run_model)
    reserved = [k for k in sets if k in RESERVED_KEYS]
    if reserved:
        raise click.UsageError(f"--set {reserved[0]}: use --{reserved[0]} instead")
    try:
        config = resume_overrides(recipe.complete_config(dict(ck["config"])), (file_label, file_config), ("flags", flags), ("--set", sets),
                                  amend_at=ck["step"] if amend else None)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    _validate(recipe, config)
    return recipe, config, out_path, ck, path


EPILOG = f"""
Models: {_model_names()}. Settings are resolved as: the model's defaults for the dataset <
--config FILE.json < explicit flags < --set KEY=VALUE; the result is saved as config.json in the run
directory (a run's config.json can be passed back as --config). A run directory holds config.json,
log.jsonl, val.jsonl, loss.png, ckpt/step_XXXXXXXX.pt and figures/. Exit status: 0 done, 1 error,
2 bad input, 130 interrupted (a checkpoint was written; continue with --resume).
"""


def setting_flags(command):
    """One option per setting declared with a ``flag`` (:data:`~inference.recipes.settings.FLAGS`):
    ``--batch-size N`` sets ``batch_size``; a bool gets ``--name/--no-name``."""
    for key, (kind, text) in reversed(FLAGS.items()):
        name = flag_name(key)
        decls = [f"{name}/--no-{name[2:]}"] if kind is bool else [name]
        command = click.option(*decls, key, type=None if kind is bool else kind, default=None,
                               help=f"{text} Default: the model's config.")(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=EPILOG)
@click.option("--model", "model", metavar="NAME", help=f"Model to train ({_model_names()}). Optional with --resume.")
@click.option("--dataset", metavar="NAME", help="Dataset, one of the model's datasets (default: its first).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to train; cuda must be available.")
@click.option("--out", metavar="DIR", help="Run directory. default runs/<model>-<dataset>")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint, exactly.")
@click.option("--amend", is_flag=True,
              help="With --resume: let --set and the flags change any setting (e.g. a lower --lr after a "
                   "divergence) from the checkpoint's step on; each change is recorded in config.json "
                   "under 'amendments'.")
@click.option("--config", "config_file", metavar="FILE.json", help="JSON object of settings (KEY: VALUE).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override one setting (repeatable); VALUE is read as JSON, else as a string. "
                   "Unknown keys are an error that lists the valid ones.")
@setting_flags
def main(model, dataset, device, out, resume, amend, config_file, sets, **given):
    """Train a structured scene model (model and guide from its recipe) with SVI."""
    from inference.training.distributed import Ranks

    flags = {k: v for k, v in given.items() if v is not None}
    ranks = Ranks.from_env()  # torchrun: one process per rank (inference/training/distributed.py)
    torch_device = ranks.device(_device(device).type)
    ranks.start(torch_device)
    try:
        _train(ranks, torch_device, model, dataset, out, resume, amend, config_file, sets, flags)
    finally:
        ranks.stop()


def _train(ranks, torch_device, model, dataset, out, resume, amend, config_file, sets, flags) -> None:
    from inference.training.trainer import Interrupted, Trainer, TrainingError

    try:
        set_values = parse_set(sets)
        file_config = load_config_file(config_file) if config_file else {}
        file_label = f"--config {config_file}"
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    if resume:
        recipe, config, out_path, ck, ck_path = plan_resume(model, dataset, out, torch_device, file_config,
                                                            flags, set_values, file_label, amend)
        if ck["step"] >= config["steps"]:
            click.echo(f"{out_path}: the run is already at step {ck['step']} of {config['steps']}; nothing to do "
                       f"(pass a larger --steps to train on). Latest checkpoint: {ck_path}")
            return
    else:
        if amend:
            raise click.UsageError("--amend changes a run being resumed; use it with --resume")
        recipe, config, out_path = plan_new(model, dataset, out, file_config, flags, set_values, file_label)
        ck = None
    ranks.barrier()  # every rank has planned before rank 0 writes into --out
    trainer = Trainer(recipe, config, torch_device, out_path, resume=ck, echo=click.echo, ranks=ranks)
    try:
        try:
            trainer.prepare()
        except (ConfigError, DatasetError) as e:  # data the settings cannot make (a cache_dir under a file, too small images)
            raise click.UsageError(str(e)) from None
        except (TrainingError, ckpt_mod.CheckpointError) as e:
            raise click.ClickException(str(e)) from None
        try:
            trainer.run()
        except Interrupted as e:
            if ranks.is_main:
                where = f"checkpoint {e.checkpoint}" if e.checkpoint else "no new checkpoint"
                launcher = (f"torchrun --nproc_per_node {ranks.world_size} -m" if ranks.distributed
                            else "python -m")
                click.echo(f"interrupted at step {e.step}; {where}. Continue with: {launcher} inference.svi "
                           f"--resume --out {out_path}", err=True)
            sys.exit(130)
        except TrainingError as e:
            raise click.ClickException(str(e)) from None
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
