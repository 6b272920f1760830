"""python -m inference.compare: Table 1 and Figure 7 of tiny GNM runs end to end (train, evaluate,
tabulate, reuse, resume), the per-model settings, the budget-to-steps plan and the errors."""
import json
import math
import shutil

import click
import pytest
from click.testing import CliRunner

import inference.compare as compare
import inference.evaluation.gnm as gnm_evaluation
from inference.compare import (
    Entry, Status, parse_metric_options, parse_models, plan_steps, resolve_entries, run_state, seconds_per_step,
    split_sets, steps_for_budget, table_markdown,
)
from inference.compare.__main__ import main

#: GNM at 32x32 on Arrow scenes (the MNIST scenes need >= 37 px), 16 training scenes, 8 test scenes
TINY_SETTINGS = ["--dataset", "arrow", "--set", "preset=arrow-tiny", "--image-size", "32", "--set", "num_train=16",
                 "--set", "num_val=8", "--set", "cache_dir=", "--batch-size", "4"]
TINY_EVAL = ["--num-samples", "8", "--particles", "2", "--metric-option", "d-steps:max_steps=4",
             "--metric-option", "d-steps:eval_every=2", "--generations", "3"]
TINY = TINY_SETTINGS + TINY_EVAL


def fake_checker(images, dataset_name, progress=False, **options):
    """S-Acc without training a structure checker (as tests/test_evaluate.py does)."""
    return {"s-acc": 0.25, "s-acc-layout": 0.5, "s-acc_reasons": {}}, None


def forbid(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} was called")
    return refuse


def invoke(args, **kwargs):
    return CliRunner().invoke(main, args, catch_exceptions=False, **kwargs)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """``--models gnm,gnm-8 --steps 2`` on tiny settings, trained and evaluated once for the module."""
    out = tmp_path_factory.mktemp("compare") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gnm_evaluation, "structure_results", fake_checker)
        result = invoke(["--models", "gnm,gnm-8", "--steps", "2", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    return out, result.output


def table_rows(md: str):
    """The data rows of the first markdown table of ``table1.md``."""
    lines = md.split("## ")[0].splitlines()
    rows = [l for l in lines if l.startswith("| ") and not l.startswith("| model")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows]


@pytest.mark.slow
def test_end_to_end_table_figure_and_runs(compared):
    out, output = compared
    for name in ("table1.md", "table1.json", "generations.png", "plan.json"):
        assert (out / name).is_file(), name
    assert (out / "generations.png").stat().st_size > 2000
    md = (out / "table1.md").read_text()
    assert md.splitlines()[2].startswith("Dataset **arrow**, test split, 8 held-out scenes")
    assert "| model | S-Acc | S-Acc layout | D-Steps | LL (nats, higher is better) | steps | training minutes | parameters |" in md
    rows = table_rows(md)
    assert [r[0] for r in rows] == ["gnm", "gnm-8"]
    for r in rows:
        assert float(r[1]) == 0.25 and float(r[2]) == 0.5  # the fake checker's S-Acc and its layout part
        assert int(r[3].rstrip("*")) in (2, 4)
        assert math.isfinite(float(r[4].split("±")[0]))
        assert r[5] == "2" and float(r[6]) >= 0 and int(r[7].replace(",", "")) > 0
    assert "The paper's Table 1" in md and "| GNM-8 (gnm-8) | 0.852 | 6639 | 10692 |" in md
    summary = json.loads((out / "table1.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["gnm", "gnm-8"] and summary["same_test_scenes"]
    for m in summary["models"]:
        assert m["status"] == "done" and m["steps"] == 2 and m["results"]["ll_particles"] == 2
        assert all(math.isfinite(m["results"][k]) for k in ("s-acc", "d-steps", "ll"))
    assert summary["paper"]["gnm"] == {"label": "GNM", "s-acc": 0.692, "d-steps": 5279, "ll": 10693}
    # each model is its own run of the gnm recipe; gnm-8 with draw_steps 8, everything else alike
    configs = {n: json.loads((out / n / "config.json").read_text()) for n in ("gnm", "gnm-8")}
    assert configs["gnm"]["draw_steps"] == 4 and configs["gnm-8"]["draw_steps"] == 8
    assert {k: v for k, v in configs["gnm"].items() if k != "draw_steps"} == \
           {k: v for k, v in configs["gnm-8"].items() if k != "draw_steps"}
    assert configs["gnm"]["preset"] == "arrow-tiny" and configs["gnm"]["batch_size"] == 4
    report = json.loads((out / "gnm" / "eval.json").read_text())
    assert report["step"] == 2 and report["split"] == "test" and report["request"]["num_samples"] == 8
    assert "training" in (out / "gnm" / "train.log").read_text()
    lines = [l for l in output.splitlines() if l.startswith("gnm-8 ")]
    assert lines and "evaluation done" in lines[-1]


@pytest.mark.slow
def test_running_again_reuses_runs_and_evaluations(compared, monkeypatch):
    out, _ = compared
    before = (out / "table1.json").read_text()
    monkeypatch.setattr(compare, "run_trainer", forbid("the trainer"))
    monkeypatch.setattr("inference.evaluate.evaluate", forbid("evaluate"))
    result = invoke(["--models", "gnm,gnm-8", "--steps", "2", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert result.output.count("evaluation reused") == 2
    old, new = json.loads(before), json.loads((out / "table1.json").read_text())
    assert [m["results"] for m in old["models"]] == [m["results"] for m in new["models"]]
    # the steps recorded in plan.json are used when neither --steps nor --budget-minutes is given
    result = invoke(["--models", "gnm", "--out", str(out), *TINY])
    assert result.exit_code == 0 and "evaluation reused" in result.output, result.output


@pytest.mark.slow
def test_more_steps_resume_the_run_and_evaluate_again(compared, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(compared[0], out)
    result = invoke(["--models", "gnm", "--steps", "3", "--out", str(out), "--metrics", "ll", *TINY])
    assert result.exit_code == 0, result.output
    log = (out / "gnm" / "train.log").read_text()
    assert "--resume" in log and "steps 2 -> 3 (resumed)" in log
    assert (out / "gnm" / "ckpt" / "step_00000003.pt").is_file()
    assert json.loads((out / "gnm" / "eval.json").read_text())["step"] == 3
    assert table_rows((out / "table1.md").read_text())[0][2] == "3"


@pytest.mark.slow
def test_a_budget_is_calibrated_once_and_turned_into_steps(tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["--models", "gnm", "--budget-minutes", "0.01", "--out", str(out), "--metrics", "ll", *TINY]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    cal = plan["models"]["gnm"]["calibration"]
    assert plan["budget_minutes"] == 0.01 and cal["warmup_steps"] == 2 and cal["timed_steps"] == 10
    assert plan["models"]["gnm"]["steps"] == steps_for_budget(0.01, cal["seconds_per_step"])
    assert not (out / ".calibration").exists()
    steps = plan["models"]["gnm"]["steps"]
    assert (out / "gnm" / "ckpt" / f"step_{steps:08d}.pt").is_file()
    monkeypatch.setattr(compare, "run_trainer", forbid("the trainer"))  # calibration and training alike
    result = invoke(args)
    assert result.exit_code == 0 and "evaluation reused" in result.output, result.output


def test_budget_to_steps():
    assert steps_for_budget(1, 0.5) == 120
    assert steps_for_budget(0.1, 0.2) == 30  # 29.999999999999996 in floating point
    assert steps_for_budget(1, 7) == 8
    assert steps_for_budget(60, 0.45) == 8000
    assert steps_for_budget(0.001, 10) == 1  # at least one step
    for bad in ((0, 1), (1, 0), (-1, 1)):
        with pytest.raises(ValueError):
            steps_for_budget(*bad)
    records = [{"step": s, "sec_per_step": t} for s, t in ((1, 9.0), (2, 5.0), (3, 1.0), (4, 2.0), (5, 3.0))]
    assert seconds_per_step(records, warmup=2) == (2.0, 3)
    with pytest.raises(ValueError, match="no timed step"):
        seconds_per_step(records[:2], warmup=2)


def entries(tmp_path, names=("gnm", "gnm-8"), sets=(), flags=None):
    common, own = split_sets(["preset=arrow-tiny", "num_train=16", "num_val=8", "cache_dir=", *sets], names)
    return resolve_entries(list(names), "arrow", tmp_path, {"image_size": 32, **(flags or {})}, common, own,
                           echo=lambda *_: None)


def test_settings_for_every_model_for_one_model_and_the_registry(tmp_path):
    gnm, gnm8 = entries(tmp_path, sets=["gnm-8:z_what_dim=3", "lr=0.001"])
    assert gnm.config["z_what_dim"] == 32 and gnm8.config["z_what_dim"] == 3  # NAME:KEY=VALUE: that model only
    assert gnm.config["lr"] == gnm8.config["lr"] == 0.001  # KEY=VALUE: every model
    assert gnm.config["draw_steps"] == 4 and gnm8.config["draw_steps"] == 8  # the registry's variant
    assert gnm8.overrides == {"draw_steps": 8, "z_what_dim": 3} and gnm8.run_dir == tmp_path / "gnm-8"
    # a --set for every model does not undo a variant; NAME:KEY=VALUE does
    gnm, gnm8 = entries(tmp_path, sets=["draw_steps=2"])
    assert gnm.config["draw_steps"] == 2 and gnm8.config["draw_steps"] == 8
    gnm, gnm8 = entries(tmp_path, sets=["gnm-8:draw_steps=6"])
    assert gnm.config["draw_steps"] == 4 and gnm8.config["draw_steps"] == 6
    assert gnm.metrics == ["s-acc", "d-steps", "ll"]


def test_parsing_errors_and_metric_options():
    assert parse_models(None) == list(compare.DEFAULT_MODELS)
    assert parse_models(["gnm-8,gnm", "gnm"]) == ["gnm-8", "gnm"]
    with pytest.raises(click.BadParameter, match="unknown model.*gnm-7.*valid models: gnm, gnm-8"):
        parse_models(["gnm,gnm-7"])
    assert split_sets(["a=1", "gnm:b=x", "gnm:c=a:b"], ["gnm"]) == ({"a": 1}, {"gnm": {"b": "x", "c": "a:b"}})
    with pytest.raises(click.BadParameter, match="not among --models"):
        split_sets(["vae:beta=2"], ["gnm"])
    with pytest.raises(click.BadParameter, match="unknown model 'nope'"):
        split_sets(["nope:beta=2"], ["gnm"])
    with pytest.raises(click.BadParameter, match="KEY=VALUE"):
        split_sets(["beta"], ["gnm"])
    assert parse_metric_options(["d-steps:max_steps=40", "s-acc:cache=/a/b"]) == \
        {"d-steps": {"max_steps": 40}, "s-acc": {"cache": "/a/b"}}
    with pytest.raises(click.BadParameter, match="METRIC:KEY=VALUE"):
        parse_metric_options(["max_steps=4"])


@pytest.mark.parametrize("args, words", [
    (["--models", "gnm,convdraw-9"], "unknown model(s) convdraw-9; valid models: gnm, gnm-8"),
    (["--models", "gnm", "--set", "gnm-8:draw_steps=2"], "it is not among --models"),
    (["--models", "gnm", "--set", "no_such_key=2"], "none of the models (gnm) has a setting 'no_such_key'"),
    (["--models", "gnm", "--set", "gnm:no_such_key=2"], "model gnm: --set: unknown key no_such_key"),
    (["--models", "gnm", "--set", "gnm:draw_steps=0"], "model gnm: draw_steps=0"),
    (["--models", "gnm"], "give --steps N or --budget-minutes M"),
    (["--models", "gnm", "--steps", "2", "--budget-minutes", "1"], "not both"),
    (["--models", "gnm", "--steps", "2", "--metrics", "ari"], "no model among gnm computes it"),
    (["--models", "gnm", "--steps", "2", "--metrics", "bogus"], "unknown metric(s) bogus"),
    (["--models", "gnm", "--steps", "2", "--dataset", "sprites-unique"], "has no such dataset"),
])
def test_bad_input_is_a_clean_usage_error(args, words, tmp_path):
    result = invoke(args + ["--out", str(tmp_path / "out")] + (TINY_SETTINGS[2:] if "--dataset" in args else TINY))
    assert result.exit_code == 2, result.output
    assert words in result.output, result.output
    assert not (tmp_path / "out" / "gnm").exists()


def test_a_model_whose_recipe_is_not_registered_yet(tmp_path, monkeypatch):
    monkeypatch.setitem(compare.REGISTRY, "ghost", ("ghost-recipe", {}))
    result = invoke(["--models", "gnm,ghost", "--steps", "2", "--out", str(tmp_path), *TINY])
    assert result.exit_code == 2 and "model ghost: its recipe 'ghost-recipe' is not registered" in result.output


def fake_run(entry: Entry, steps, config=None, model="gnm"):
    """A run directory with ``config.json`` and (empty) checkpoint files of ``steps``."""
    (entry.run_dir / "ckpt").mkdir(parents=True)
    (entry.run_dir / "config.json").write_text(json.dumps({**(config or entry.config), "model": model}))
    for s in steps:
        (entry.run_dir / "ckpt" / f"step_{s:08d}.pt").write_bytes(b"")


def test_what_a_run_directory_holds(tmp_path):
    gnm, gnm8 = entries(tmp_path)
    assert run_state(gnm, 10) == ("new", 0, None)
    fake_run(gnm, [0, 5])
    assert run_state(gnm, 10)[:2] == ("resume", 5) and run_state(gnm, 5)[:2] == ("done", 5)
    with pytest.raises(click.UsageError, match="past the 3 steps asked"):
        run_state(gnm, 3)
    assert run_state(gnm, 0)[:2] == ("done", 0)
    fake_run(gnm8, [0], config={**gnm.config})  # draw_steps 4 where gnm-8 asks for 8
    with pytest.raises(click.UsageError, match=r"other settings: draw_steps=4 \(asked 8\)"):
        run_state(gnm8, 10)
    shutil.rmtree(gnm8.run_dir)
    fake_run(gnm8, [0], model="space")
    with pytest.raises(click.UsageError, match="holds a run of model 'space'"):
        run_state(gnm8, 10)
    # a resumable setting (log_every) may differ: the run goes on
    shutil.rmtree(gnm8.run_dir)
    fake_run(gnm8, [0, 4], config={**gnm8.config, "log_every": 1, "steps": 4})
    assert run_state(gnm8, 4)[:2] == ("done", 4)


def test_the_plan_calibrates_once_and_is_kept(tmp_path):
    calls = []

    def calibrate(entry):
        calls.append(entry.name)
        return {"seconds_per_step": {"gnm": 0.5, "gnm-8": 1.5}[entry.name], "device": "cpu",
                "config_digest": compare.config_digest(entry.config), "warmup_steps": 2, "timed_steps": 10}

    status = Status(["gnm", "gnm-8"], echo=lambda *a, **k: None, tty=False)
    es = entries(tmp_path)
    plan = plan_steps(es, tmp_path, "arrow", "cpu", None, 1.0, status, calibrate)
    assert calls == ["gnm", "gnm-8"] and [e.steps for e in es] == [120, 40]
    assert json.loads((tmp_path / "plan.json").read_text()) == plan and plan["budget_minutes"] == 1.0
    es = entries(tmp_path)
    plan_steps(es, tmp_path, "arrow", "cpu", None, 2.0, status, calibrate)  # a new budget, the same calibrations
    assert calls == ["gnm", "gnm-8"] and [e.steps for e in es] == [240, 80]
    es = entries(tmp_path)
    plan_steps(es, tmp_path, "arrow", "cpu", None, None, status, calibrate)  # neither: plan.json's steps
    assert [e.steps for e in es] == [240, 80]
    es = entries(tmp_path, sets=["gnm:lr=0.01"])  # another config: calibrated again
    plan_steps(es, tmp_path, "arrow", "cpu", None, 2.0, status, calibrate)
    assert calls == ["gnm", "gnm-8", "gnm"]
    es = entries(tmp_path)
    plan_steps(es, tmp_path, "arrow", "cpu", 7, None, status, calibrate)
    assert [e.steps for e in es] == [7, 7] and json.loads((tmp_path / "plan.json").read_text())["steps"] == 7
    with pytest.raises(click.UsageError, match="a comparison on 'arrow', not 'mnist4'"):
        plan_steps(es, tmp_path, "mnist4", "cpu", 7, None, status, calibrate)


def test_the_table_marks_failures_unreached_d_steps_and_metrics_a_model_lacks():
    summary = dict(dataset="mnist4-10", num_samples=500, particles=None, device="cpu", budget_minutes=30, steps=None,
                   metrics=["s-acc", "d-steps", "ll"], models=[
                       dict(name="gnm", status="done", metrics=["s-acc", "d-steps", "ll"], steps=900, train_seconds=1790.0,
                            parameters=1234567, results={"s-acc": 0.5, "d-steps": 5000, "d-steps_reached": False,
                                                         "ll": 10500.25, "ll_sem": 3.0, "ll_images": 200,
                                                         "ll_particles": 100}),
                       dict(name="space", status="done", metrics=["ll"], steps=800, train_seconds=1799.0,
                            parameters=1000, results={"ll": 10400.0, "ll_images": 200, "ll_particles": 100}),
                       dict(name="vae", status="failed", steps=1000, error="training failed (exit 1)\nmore")])
    md = table_markdown(summary)
    rows = table_rows(md)
    assert rows[0] == ["gnm", "0.500", "—", "5000*", "10500.2 ± 3.0", "900", "29.8", "1,234,567"]  # no layout part given
    assert rows[1][:5] == ["space", "n/a", "n/a", "n/a", "10400.0"]
    assert rows[2][:2] == ["vae", "failed: training failed (exit 1)"]
    assert "30 minutes of training steps per model" in md and "(LL on the first 200)" in md
    assert "K = 100 (each model's ll_particles)" in md and "did not reach" in md
    assert "not comparable in absolute value" in md and "This comparison is on" not in md


def test_a_failed_model_is_in_the_table_and_the_exit_status_is_1(tmp_path, monkeypatch):
    def failing_trainer(args, log_path, env, on_line=None, on_interrupt=None):
        log_path.write_text("Traceback ...\nRuntimeError: out of memory\n")
        return 1

    monkeypatch.setattr(compare, "run_trainer", failing_trainer)
    result = invoke(["--models", "gnm,gnm-8", "--steps", "2", "--out", str(tmp_path), *TINY])
    assert result.exit_code == 1 and "gnm, gnm-8 failed" in result.output, result.output
    assert "RuntimeError: out of memory" in result.output  # the end of the trainer's output is shown
    rows = table_rows((tmp_path / "table1.md").read_text())
    assert [r[:2] for r in rows] == [["gnm", "failed: training failed (exit 1); " + str(tmp_path / "gnm" / "train.log")
                                      + " ends:"], ["gnm-8", "failed: training failed (exit 1); "
                                                    + str(tmp_path / "gnm-8" / "train.log") + " ends:"]]
    assert not (tmp_path / "generations.png").exists()


def test_ctrl_c_exits_130_and_says_how_to_continue(tmp_path, monkeypatch):
    def interrupted_trainer(args, log_path, env, on_line=None, on_interrupt=None):
        raise compare.ComparisonInterrupted(f"interrupted; the trainer's output is in {log_path}")

    monkeypatch.setattr(compare, "run_trainer", interrupted_trainer)
    result = CliRunner().invoke(main, ["--models", "gnm", "--steps", "2", "--out", str(tmp_path), *TINY])
    assert result.exit_code == 130 and "Run the same command again to continue" in result.output, result.output


def test_device_is_checked(tmp_path):
    result = invoke(["--models", "gnm", "--steps", "2", "--device", "tpu", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'tpu' is not a device" in result.output
    assert compare.child_device("cpu") == ("cpu", {})
    assert compare.child_device("cuda:1")[0] == "cuda"


def test_status_lines():
    printed = []
    echo = lambda text="", nl=True: printed.append((text, nl))  # noqa: E731
    tty = Status(["gnm", "convdraw-8"], echo, tty=True)
    tty.show("gnm", "training 10/100")
    tty.show("gnm", "training 20/100")
    tty.done("gnm", "done")
    assert printed == [("\r\x1b[Kgnm         training 10/100", False), ("\r\x1b[Kgnm         training 20/100", False),
                       ("\r\x1b[Kgnm         done", True)]
    printed.clear()
    log = Status(["gnm"], echo, tty=False)
    for step in range(5):
        log.show("gnm", f"training {step}/5", "training")
    log.show("gnm", "evaluating")
    assert [p[0] for p in printed] == ["gnm  training 0/5", "gnm  evaluating"]


def test_a_run_directory_of_other_settings_stops_the_comparison_before_any_training(tmp_path, monkeypatch):
    gnm, gnm8 = entries(tmp_path)
    fake_run(gnm8, [0], config={**gnm.config})  # OUT/gnm-8 holds a run with draw_steps 4
    monkeypatch.setattr(compare, "run_trainer", forbid("the trainer"))
    result = invoke(["--models", "gnm,gnm-8", "--steps", "2", "--out", str(tmp_path), *TINY])
    assert result.exit_code == 2 and "draw_steps=4 (asked 8)" in result.output, result.output
    assert not (tmp_path / "gnm").exists()


def test_any_registered_recipe_can_be_compared(tmp_path, monkeypatch):
    """Nothing names a model outside the registry: a SPACE entry takes the settings it has and is
    evaluated on the metrics its recipe computes."""
    monkeypatch.setitem(compare.REGISTRY, "space", ("space", {}))
    common, own = split_sets(["z_what_dim=8", "draw_steps=2", "space:num_components=2"], ["gnm", "space"])
    gnm, space = resolve_entries(["gnm", "space"], "mnist4", tmp_path, {"num_train": 16}, common, own,
                                 echo=lambda *_: None)
    assert gnm.config["z_what_dim"] == space.config["z_what_dim"] == 8
    assert gnm.config["draw_steps"] == 2 and "draw_steps" not in space.config  # only the recipes that have it
    assert space.config["num_components"] == 2 and space.config["num_train"] == gnm.config["num_train"] == 16
    assert gnm.metrics == ["s-acc", "d-steps", "ll"] and space.metrics == ["ll"]
    args = compare.trainer_arguments(space, 5, "cpu", tmp_path / "space")
    assert args[:4] == ["--model", "space", "--dataset", "mnist4"] and "num_components=2" in args
