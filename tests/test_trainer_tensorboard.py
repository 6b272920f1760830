"""``--tensorboard``: the trainer's TensorBoard copy of log.jsonl, val.jsonl, the figures and the
settings, read back from the event files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from toy_recipe import toy, train  # noqa: E402,F401  (toy is a fixture)


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def scalar(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_the_event_file_holds_the_jsonl_numbers_and_the_settings(toy, tmp_path):
    run = tmp_path / "run"
    train("--model", "toy", "--steps", 8, "--log-every", 2, "--val-every", 4, "--tensorboard", "--out", run)
    acc = events(run)
    logged = jsonl(run / "log.jsonl")
    assert scalar(acc, "train/loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    assert scalar(acc, "train/lr") == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in logged]
    validated = jsonl(run / "val.jsonl")
    assert scalar(acc, "val/loss") == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in validated]
    assert [s for s, _ in scalar(acc, "val/loss")] == [4, 8]
    content = {tag: plugin_data_pb2.HParamsPluginData.FromString(data)
               for tag, data in acc.PluginTagToContent("hparams").items()}
    settings = content["_hparams_/session_start_info"].session_start_info.hparams
    assert settings["steps"].number_value == 8
    assert settings["tensorboard"].bool_value or settings["tensorboard"].number_value == 1  # torch writes bools as 1/0
    assert json.loads((run / "config.json").read_text())["tensorboard"] is True


def test_a_resumed_run_continues_the_curves_without_repeating_steps(toy, tmp_path):
    run = tmp_path / "run"
    train("--model", "toy", "--steps", 4, "--log-every", 1, "--val-every", 0, "--tensorboard", "--out", run)
    train("--resume", "--steps", 8, "--out", run)
    steps = [s for s, _ in scalar(events(run), "train/loss")]
    assert steps == list(range(1, 9))


def test_validation_metrics_and_figures_of_a_real_model(tmp_path):
    run = tmp_path / "run"
    train("--model", "econ", "--steps", 2, "--batch-size", 2, "--num-train", 4, "--image-size", 16,
          "--set", "num_val=4", "--set", "val_items=4", "--set", "cache_dir=", "--val-every", 2,
          "--tensorboard", "--out", run)
    acc = events(run)
    tags = acc.Tags()
    assert "val/metrics/fg-ari" in tags["scalars"] and "val/metrics/win_share_t1/0" in tags["scalars"]
    figures = {p.stem for p in (run / "figures").rglob("*.png")}
    assert figures and {f"figures/{name}" for name in figures} <= set(tags["images"])


def test_without_the_package_the_flag_is_a_clear_error(toy, tmp_path, monkeypatch):
    from inference.training import tensorboard

    monkeypatch.setattr(tensorboard, "available", lambda: False)
    result = train("--model", "toy", "--steps", 2, "--tensorboard", "--out", tmp_path / "run", expect=2)
    assert 'pip install -e ".[tensorboard]"' in result.output
    assert not (tmp_path / "run").exists()


def test_a_killed_runs_steps_after_its_checkpoint_are_replaced_on_resume(toy, tmp_path):
    """As if killed after logging step 8 but before checkpointing it: the resumed run (from step 4)
    rewrites steps 5-8, and the curve is the one of log.jsonl, once per step."""
    run = tmp_path / "run"
    train("--model", "toy", "--steps", 8, "--log-every", 1, "--val-every", 0, "--ckpt-every", 4,
          "--tensorboard", "--out", run)
    (run / "ckpt" / "step_00000008.pt").unlink()
    train("--resume", "--steps", 8, "--out", run)
    logged = jsonl(run / "log.jsonl")
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert scalar(events(run), "train/loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
