"""``python -m inference.svi``: option handling, settings precedence, and bad input that must fail
clearly and leave existing runs untouched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_recipe import toy, train  # noqa: E402,F401  (toy is a fixture)

ROOT = Path(__file__).resolve().parents[1]


def snapshot(directory: Path) -> dict:
    """Every file's bytes and every directory under ``directory``."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


@pytest.fixture
def existing(toy, tmp_path):
    """A finished toy run (12 steps) and a snapshot of its files."""
    run = tmp_path / "run"
    train("--model", "toy", "--out", run)
    return run


def test_help_documents_every_option():
    from click.testing import CliRunner

    from inference.svi import main

    out = CliRunner().invoke(main, ["--help"]).output
    for option in ["--model", "--dataset", "--steps", "--batch-size", "--lr", "--seed", "--device", "--out",
                   "--resume", "--config", "--set", "--image-size", "--num-train", "--workers", "--log-every",
                   "--val-every", "--ckpt-every", "--keep", "--figures-every", "--deterministic"]:
        assert option in out, option
    assert "econ" in out and "gnm" in out and "--set KEY=VALUE" in out


@pytest.mark.slow
def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "inference.svi", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--resume" in result.stdout


# ------------------------------------------------------------------------------------ bad input
BAD_NEW_RUN = [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "toy", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--model", "toy", "--steps", "0"], "--steps=0: must be a positive integer"),
    (["--model", "toy", "--steps", "-3"], "--steps=-3"),
    (["--model", "toy", "--steps", "ten"], "'ten' is not a valid integer"),
    (["--model", "toy", "--batch-size", "0"], "--batch-size=0"),
    (["--model", "toy", "--batch-size", "20"], "fewer than one batch"),
    (["--model", "toy", "--lr", "0"], "--lr=0.0: must be a positive number"),
    (["--model", "toy", "--lr", "-1e-3"], "--lr=-0.001"),
    (["--model", "toy", "--lr", "nan"], "--lr=nan"),
    (["--model", "toy", "--keep", "0"], "--keep=0"),
    (["--model", "toy", "--log-every", "0"], "--log-every=0"),
    (["--model", "toy", "--val-every", "-1"], "--val-every=-1"),
    (["--model", "toy", "--set", "bogus=1"], "unknown key bogus; valid keys: batch_size, "),
    (["--model", "toy", "--set", "latent"], "expected KEY=VALUE"),
    (["--model", "toy", "--set", "latent=0"], "latent=0: must be a positive integer"),
    (["--model", "toy", "--set", "latent=two"], "latent='two': expected int"),
    (["--model", "toy", "--set", "steps=1.5"], "steps=1.5: expected int"),
    (["--model", "toy", "--set", "scheduler=cosine"], "scheduler='cosine': must be none, plateau or step"),
    (["--model", "toy", "--set", "model=econ"], "use --model"),
    (["--model", "toy", "--config", "missing.json"], "cannot read"),
    (["--model", "toy", "--device", "gpu"], "'gpu' is not one of"),
    ([], "missing --model"),
]


@pytest.mark.parametrize("args,message", BAD_NEW_RUN, ids=[" ".join(a) or "nothing" for a, _ in BAD_NEW_RUN])
def test_bad_input_fails_clearly_and_creates_nothing(toy, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = train(*args, "--out", tmp_path / "new", expect=2)
    assert message in result.output, result.output
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "runs").exists()


def test_bad_config_files(toy, tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{lr: 1")
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"lr": 0.1, "learning_rate": 0.1}))
    wrong_model = tmp_path / "wrong.json"
    wrong_model.write_text(json.dumps({"model": "econ"}))
    for path, message in [(bad_json, "not valid JSON"), (not_object, "expected a JSON object"),
                          (unknown, "unknown key learning_rate; valid keys"), (wrong_model, "is for model 'econ'")]:
        result = train("--model", "toy", "--config", path, "--out", tmp_path / "new", expect=2)
        assert message in result.output and str(path) in result.output, result.output
        assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(toy, tmp_path):
    result = train("--model", "toy", "--device", "cuda", "--out", tmp_path / "new", expect=2)
    assert "CUDA is not available" in result.output and not (tmp_path / "new").exists()


def test_existing_run_is_never_overwritten(existing, tmp_path):
    other_config = tmp_path / "other.json"
    other_config.write_text(json.dumps({**config_of(existing), "lr": 0.3}))
    before = snapshot(existing)
    cases = [
        (["--model", "toy"], 2, "already holds a run (model 'toy', dataset 'blocks', 3 checkpoints (latest step 12))"),
        (["--model", "toy", "--steps", "20"], 2, "Use --resume to continue it, or a new --out"),
        (["--model", "toy", "--dataset", "ramps"], 2, "holds a different run (model 'toy', dataset 'blocks'"),
        (["--model", "toy", "--lr", "0"], 2, "--lr=0.0"),
        (["--model", "nope"], 2, "unknown model"),
        (["--resume", "--lr", "0.5"], 2, "cannot change 'lr' when resuming"),
        (["--resume", "--set", "latent=5"], 2, "cannot change 'latent' when resuming"),
        (["--resume", "--val-every", "7"], 2, "cannot change 'val_every' when resuming"),
        (["--resume", "--seed", "1"], 2, "cannot change 'seed' when resuming"),
        (["--resume", "--config", str(other_config)], 2, "cannot change 'lr' when resuming"),
        (["--resume", "--config", str(existing / "config.json"), "--steps", "0"], 2, "--steps=0"),
        (["--resume", "--dataset", "ramps"], 2, "holds a run of model 'toy' on dataset 'blocks'"),
        (["--resume", "--model", "nope"], 2, "holds a run of model 'toy'"),
        (["--resume", "--steps", "0"], 2, "--steps=0"),
        (["--resume", "--set", "bogus=1"], 2, "unknown key bogus"),
        (["--resume"], 0, "already at step 12 of 12; nothing to do"),
    ]
    for args, code, message in cases:
        result = train(*args, "--out", existing, expect=code)
        assert message in result.output, (args, result.output)
        assert snapshot(existing) == before, args


def test_resume_without_a_run(toy, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "empty")
    result = train("--resume", "--out", tmp_path / "empty", expect=2)
    assert "holds no run to resume" in result.output and snapshot(tmp_path / "empty") == before
    result = train("--resume", "--out", tmp_path / "absent", expect=2)
    assert "holds no run to resume" in result.output and not (tmp_path / "absent").exists()
    result = train("--resume", expect=2)
    assert "--resume needs --out" in result.output


def test_resume_with_corrupt_or_missing_checkpoint(existing):
    latest = existing / "ckpt" / "step_00000012.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated by a crash of something else
    before = snapshot(existing)
    result = train("--resume", "--steps", 20, "--out", existing, expect=1)
    assert str(latest) in result.output and "cannot read the checkpoint" in result.output
    assert "older checkpoints: step_00000005.pt, step_00000010.pt" in result.output
    assert snapshot(existing) == before
    for _, p in [(0, q) for q in (existing / "ckpt").iterdir()]:
        p.unlink()
    before = snapshot(existing)
    result = train("--resume", "--steps", 20, "--out", existing, expect=1)
    assert "no checkpoint found" in result.output and snapshot(existing) == before


def test_out_that_is_a_file(toy, tmp_path):
    (tmp_path / "f").write_text("x")
    result = train("--model", "toy", "--out", tmp_path / "f", expect=2)
    assert "is not a directory" in result.output and (tmp_path / "f").read_text() == "x"


def test_out_dir_without_run_files_is_used(toy, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "README").write_text("notes")
    train("--model", "toy", "--steps", 3, "--out", tmp_path / "r")
    assert (tmp_path / "r" / "README").read_text() == "notes" and (tmp_path / "r" / "config.json").exists()


# ------------------------------------------------------------------------------------ settings
def test_precedence_defaults_config_flags_set(toy, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"lr": 0.5, "latent": 4, "tag": "from-file"}))
    base = ["--model", "toy", "--steps", 2]

    train(*base, "--out", tmp_path / "a")
    assert config_of(tmp_path / "a")["lr"] == 0.01 and config_of(tmp_path / "a")["latent"] == 2  # recipe default

    train(*base, "--config", cfg, "--out", tmp_path / "b")
    c = config_of(tmp_path / "b")
    assert (c["lr"], c["latent"], c["tag"]) == (0.5, 4, "from-file")

    train(*base, "--config", cfg, "--lr", 0.2, "--out", tmp_path / "c")
    assert config_of(tmp_path / "c")["lr"] == 0.2                                # flag beats file

    train(*base, "--config", cfg, "--lr", 0.2, "--set", "lr=0.1", "--set", "tag=hello", "--set", "latent=3",
          "--out", tmp_path / "d")
    c = config_of(tmp_path / "d")
    assert (c["lr"], c["tag"], c["latent"]) == (0.1, "hello", 3)                # --set beats everything
    # the saved config is the one used: the model was built with latent 3
    from inference.training import load_checkpoint, find_checkpoint

    ck = load_checkpoint(find_checkpoint(tmp_path / "d"))
    assert ck["model_state"]["decoder.weight"].shape == (16, 3) and ck["config"] == c


def test_set_values_are_json_else_strings(toy, tmp_path):
    train("--model", "toy", "--steps", 2, "--set", "tag=hello world", "--set", "clip=null", "--set", "lr=1e-3",
          "--set", "scheduler=step", "--set", "num_val=5", "--no-deterministic", "--out", tmp_path / "r")
    c = config_of(tmp_path / "r")
    assert c["tag"] == "hello world" and c["num_val"] == 5
    assert c["clip"] is None and c["lr"] == 0.001 and c["scheduler"] == "step" and c["deterministic"] is False


def test_deterministic_mode_is_on_by_default_and_restored_after_the_run(toy, tmp_path, monkeypatch):
    seen = []
    original = toy.loss

    def loss(self, *args):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self, *args)

    monkeypatch.setattr(toy, "loss", loss)
    assert not torch.are_deterministic_algorithms_enabled()
    train("--model", "toy", "--steps", 2, "--out", tmp_path / "r")
    assert config_of(tmp_path / "r")["deterministic"] is True and len(seen) >= 2 and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide mode is put back


def test_set_type_must_match_default(toy, tmp_path):
    result = train("--model", "toy", "--set", "tag=[1, 2]", "--out", tmp_path / "r", expect=2)
    assert "tag=[1, 2]: expected str" in result.output


def test_flags_map_to_settings_and_dataset_defaults(toy, tmp_path):
    train("--model", "toy", "--dataset", "ramps", "--steps", 3, "--batch-size", 2, "--seed", 7, "--image-size", 5,
          "--num-train", 9, "--workers", 0, "--log-every", 1, "--val-every", 2, "--ckpt-every", 1, "--keep", 1,
          "--figures-every", 2, "--out", tmp_path / "r")
    c = config_of(tmp_path / "r")
    assert c == {**c, "dataset": "ramps", "model": "toy", "latent": 3, "steps": 3, "batch_size": 2, "seed": 7,
                 "image_size": 5, "num_train": 9, "workers": 0, "log_every": 1, "val_every": 2, "ckpt_every": 1,
                 "keep": 1, "figures_every": 2}
    # a run's config.json reproduces it (dataset included) when passed back as --config
    train("--model", "toy", "--config", tmp_path / "r" / "config.json", "--out", tmp_path / "again")
    assert config_of(tmp_path / "again") == c


def test_default_out_dir(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train("--model", "toy", "--steps", 2)
    assert (tmp_path / "runs" / "toy-blocks" / "ckpt" / "step_00000002.pt").exists()
    assert "out runs/toy-blocks" in result.output
    train("--model", "toy", "--resume", "--steps", 4)          # default out found from --model
    assert (tmp_path / "runs" / "toy-blocks" / "ckpt" / "step_00000004.pt").exists()


def test_resume_may_change_operational_settings(existing):
    train("--resume", "--steps", 16, "--log-every", 2, "--keep", 1, "--out", existing)
    c = config_of(existing)
    assert (c["steps"], c["log_every"], c["keep"]) == (16, 2, 1)
    assert [p.name for p in (existing / "ckpt").iterdir()] == ["step_00000016.pt"]
    steps = [json.loads(line)["step"] for line in (existing / "log.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9, 12, 14, 16]


def test_resume_with_amend_changes_the_lr_and_records_it(existing):
    lr = config_of(existing)["lr"]
    train("--resume", "--amend", "--lr", lr / 10, "--steps", 15, "--out", existing)
    c = config_of(existing)
    assert c["lr"] == lr / 10
    assert c["amendments"] == [{"step": 12, "key": "lr", "from": lr, "to": lr / 10}]
    records = [json.loads(line) for line in (existing / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if r["step"] > 12] == [pytest.approx(lr / 10)]
    # a later plain resume keeps the amended lr (the optimiser state now carries it) and the record
    train("--resume", "--steps", 18, "--out", existing)
    assert config_of(existing)["amendments"] == c["amendments"]
    records = [json.loads(line) for line in (existing / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 18 and records[-1]["lr"] == pytest.approx(lr / 10)


def test_amend_needs_resume(toy, tmp_path):
    from click.testing import CliRunner

    from inference.svi import main

    result = CliRunner().invoke(main, ["--model", "toy", "--amend", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--amend changes a run being resumed" in result.output


def test_summary_and_final_message(existing, tmp_path):
    result = train("--model", "toy", "--steps", 2, "--out", tmp_path / "s")
    first = result.output.splitlines()[0]
    for part in ["toy", "blocks", "device cpu", "117 parameters", "steps 0 -> 2", str(tmp_path / "s")]:
        assert part in first
    last = result.output.strip().splitlines()[-1]
    for part in ["step_00000002.pt", "log.jsonl", "figures"]:
        assert part in last


# ------------------------------------------------------------------ ECON: data paths, divergence
ECON_TINY = ["--model", "econ", "--steps", 2, "--batch-size", 2, "--num-train", 4, "--set", "num_val=2",
             "--set", "val_items=2", "--val-every", 0, "--log-every", 1]


def test_cache_dir_that_cannot_be_made_is_bad_input(tmp_path):
    (tmp_path / "file").write_text("x")
    cache = tmp_path / "file" / "cache"
    result = train(*ECON_TINY, "--set", f"cache_dir={cache}", "--out", tmp_path / "new", expect=2)
    assert f"--set cache_dir={cache}: cannot make the train data: Not a directory" in result.output
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_cache_dir_is_bad_input(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    result = train(*ECON_TINY, "--set", f"cache_dir={tmp_path / 'locked'}", "--out", tmp_path / "new", expect=2)
    assert "cannot make the train data: Permission denied" in result.output and not (tmp_path / "new").exists()


def test_data_the_settings_cannot_make_is_bad_input(tmp_path, monkeypatch):
    """Validation builds no data (GNM's did); the trainer's data step reports it, before any file."""
    from inference.recipes.gnm import GNMRecipe
    from inference.training.config import resolve_config

    monkeypatch.setenv("PYRO_SCENES_MNIST", str(tmp_path / "nowhere"))
    GNMRecipe().validate_config(resolve_config(GNMRecipe(), "mnist4"))
    result = train("--model", "gnm", "--steps", 1, "--set", "cache_dir=", "--out", tmp_path / "new", expect=2)
    assert f"MNIST path {tmp_path / 'nowhere'} does not exist" in result.output and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_econ_diverging_at_step_0_stops_and_resumes_with_amend(tmp_path):
    run = tmp_path / "run"
    result = train(*ECON_TINY, "--set", "cache_dir=", "--set", "sigma_x=1e-30", "--out", run, expect=1)
    assert ("Error: the logits of a Categorical distribution became invalid (NaN or infinite) at step 0; stopped. "
            f"The last good checkpoint is {run / 'ckpt' / 'step_00000000.pt'}") in result.output
    assert f"python -m inference.svi --resume --amend --lr 5e-05 --out {run}" in result.output
    train("--resume", "--amend", "--set", "sigma_x=0.1", "--out", run)
    assert config_of(run)["amendments"] == [{"step": 0, "key": "sigma_x", "from": 1e-30, "to": 0.1}]
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_econ_with_a_huge_lr_stops_at_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = train(*ECON_TINY, "--set", "cache_dir=", "--lr", "1e6", "--out", run, expect=1)
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "became invalid (NaN or infinite) at step 1" in error[0], result.output
    assert f"--resume --amend --lr 100000 --out {run}" in error[0]
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step_00000000.pt"]
