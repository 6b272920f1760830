"""python -m inference.evaluate: error paths and end-to-end runs on tiny untrained checkpoints."""
import json

import pyro
import pytest
import torch
from click.testing import CliRunner

from inference.evaluate import EvaluationError, cli, evaluate, parse_metrics, select_metrics
from inference.figures.__main__ import main as figures_cli
from inference.likelihood.__main__ import main as likelihood_cli
from inference.metrics.structure import TrainSettings
from inference.recipes import get_recipe
from inference.training.checkpoint import save_checkpoint
from toy_recipe import toy  # noqa: F401  (a fixture)


def _make_run(root, name, dataset, **overrides):
    recipe = get_recipe(name)
    config = recipe.default_config(dataset)
    config.update(cache_dir=None, seed=0, model=name, **overrides)
    recipe.validate_config(config)
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = recipe.build(config, torch.device("cpu"))
    save_checkpoint(root / "ckpt", dict(model=name, dataset=dataset, step=7, config=config,
                                        model_state=model.state_dict(), guide_state=guide.state_dict()))
    return root


@pytest.fixture(scope="module")
def econ_run(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("econ"), "econ", "sprites-unique", image_size=16)


@pytest.fixture(scope="module")
def gnm_run(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("gnm"), "gnm", "mnist4")


def test_metric_parsing():
    assert parse_metrics(None) is None
    assert parse_metrics(["ari,fg-ari", " MSC "]) == ["ari", "fg-ari", "msc"]
    with pytest.raises(EvaluationError, match="unknown metric"):
        parse_metrics(["ari,bogus"])
    assert select_metrics(get_recipe("gnm"), None)[0] == "box-ap"
    with pytest.raises(EvaluationError, match="do not apply to econ"):
        select_metrics(get_recipe("econ"), ["box-ap"])


def test_cli_errors(tmp_path, econ_run):
    runner = CliRunner()
    r = runner.invoke(cli, [str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no such checkpoint" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(cli, [str(tmp_path / "empty")])
    assert r.exit_code == 1 and "no checkpoint found" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(cli, [str(bad)])
    assert r.exit_code == 1 and "cannot read the checkpoint" in r.output
    r = runner.invoke(cli, [str(econ_run), "--metrics", "ari,nonsense"])
    assert r.exit_code == 2 and "unknown metric(s) nonsense" in r.output
    r = runner.invoke(cli, [str(econ_run), "--metrics", "box-ap"])
    assert r.exit_code == 2 and "do not apply to econ" in r.output


def test_incompatible_checkpoint(tmp_path, econ_run):
    ckpt = torch.load(next((econ_run / "ckpt").glob("*.pt")), weights_only=True)
    ckpt["config"]["latent_dim"] = 7  # the saved weights no longer fit
    save_checkpoint(tmp_path / "ckpt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    r = CliRunner().invoke(cli, [str(tmp_path), "-q"])
    assert r.exit_code == 1 and "does not fit" in r.output


def test_econ_end_to_end(tmp_path, econ_run):
    out = tmp_path / "econ.json"
    r = CliRunner().invoke(cli, [str(econ_run), "-n", "6", "--batch-size", "3", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    res = report["results"]
    assert report["model"] == "econ" and report["step"] == 7 and res["num_scenes"] == 6
    for key in ("ari", "fg-ari", "msc", "specialisation", "shape-iou"):
        assert key in res
    assert -1.0 <= res["ari"] <= 1.0 and 0.0 <= res["msc"] <= 1.0
    assert 0.0 < res["specialisation"] <= 1.0
    assert len(res["specialisation_matrix"]) == 4  # 3 classes + background
    assert sum(map(sum, res["specialisation_matrix"])) == 6 * 4
    for p in report["plots"]:
        assert (tmp_path / p.split("/")[-1]).is_file()
    # default output location and a subset of metrics
    r = CliRunner().invoke(cli, [str(econ_run), "-n", "2", "-m", "ari", "--no-plots", "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads((econ_run / "eval" / "metrics_test.json").read_text())
    assert report["metrics"] == ["ari"] and "msc" not in report["results"] and "plots" not in report


def test_gnm_end_to_end(tmp_path, gnm_run):
    report = evaluate(gnm_run, num_samples=6, batch_size=6, particles=2, out=tmp_path / "gnm.json", progress=False,
                      metric_options={"s-acc": dict(cache=tmp_path / "cache", settings=TrainSettings(num_scenes=4, steps=1, batch_size=4, width=8)),
                                      "d-steps": dict(max_steps=4, eval_every=2)})
    res = report["results"]
    assert report["model"] == "gnm" and res["num_scenes"] == 6
    assert 0.0 <= res["box-ap@0.5"] <= 1.0 and 0.0 <= res["count-accuracy"] <= 1.0
    assert isinstance(res["ll"], float) and res["ll_particles"] == 2
    assert 0.0 <= res["s-acc"] <= 1.0 and res["s-acc_checker"].startswith(str(tmp_path / "cache"))
    assert res["d-steps"] in (2, 4) and res["d-steps_protocol"]["max_steps"] == 4
    assert "representation" in res
    assert json.loads((tmp_path / "gnm.json").read_text())["results"]["count-accuracy"] == res["count-accuracy"]
    assert any(p.endswith("_generations.png") for p in report["plots"])


def test_econ_on_scenes_with_more_objects_than_in_training(tmp_path, econ_run):
    out = tmp_path / "four.json"
    r = CliRunner().invoke(cli, [str(econ_run), "-n", "3", "-m", "fg-ari,specialisation", "--no-plots", "-q", "--out", str(out),
                                 "--set", "num_objects=4", "--set", "num_layers=5"])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["overrides"] == {"num_objects": 4, "num_layers": 5}
    assert sum(map(sum, report["results"]["specialisation_matrix"])) == 3 * 5  # 4 objects + background per scene
    assert len(report["results"]["win_share"]) == 5  # T = 5 layers inferred
    r = CliRunner().invoke(cli, [str(econ_run), "-n", "1", "-q", "--set", "bogus=1"])
    assert r.exit_code == 2 and "unknown setting(s) bogus" in r.output
    r = CliRunner().invoke(cli, [str(econ_run), "-n", "1", "-q", "--set", "num_layers=0"])
    assert r.exit_code == 2 and "num_layers" in r.output
    r = CliRunner().invoke(cli, [str(econ_run), "-n", "1", "-q", "--set", "novalue"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_a_recipe_with_only_the_training_hooks_is_evaluated_by_its_log_likelihood(tmp_path, toy):
    """The toy recipe overrides no evaluation hook: the contract's defaults give it ``ll``
    (importance sampling with its guide), its plot and the likelihood CLI."""
    run = _make_run(tmp_path / "toy", "toy", "blocks")
    report = evaluate(run, num_samples=4, batch_size=2, particles=3, out=tmp_path / "toy.json", progress=False)
    assert report["model"] == "toy" and report["metrics"] == ["ll"]
    assert report["results"]["ll_particles"] == 3 and report["results"]["ll_images"] == 4
    assert isinstance(report["results"]["ll"], float)
    assert [p.rsplit("/", 1)[-1] for p in report["plots"]] == ["toy_ll.png"]
    with pytest.raises(EvaluationError, match="do not apply to toy"):
        evaluate(run, metrics=["ari"], out=tmp_path / "x.json", progress=False)
    r = CliRunner().invoke(likelihood_cli, [str(run), "--particles", "3", "--num-images", "2", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert "toy blocks step 7: log p(x) =" in r.output and "K = 3" in r.output


def test_figures_cli(tmp_path, econ_run):
    r = CliRunner().invoke(figures_cli, [str(econ_run), "--out", str(tmp_path), "--num-images", "2"])
    assert r.exit_code == 0, r.output
    written = r.output.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["decomposition.png", "expert_samples.png", "layered_generation.png"]
    assert all((tmp_path / p.rsplit("/", 1)[-1]).stat().st_size > 1000 for p in written)
    r = CliRunner().invoke(figures_cli, [str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no such checkpoint" in r.output
