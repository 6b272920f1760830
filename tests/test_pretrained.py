"""The shipped pretrained models load in one line and do what their README section says."""
import pyro
import pytest
import torch
from pyro import poutine

from datasets import make_dataset
from datasets.sprites import CLASS_NAMES
from inference import pretrained
from inference.evaluation.econ import evaluate_econ

#: FG-ARI each shipped ECON model must reach on 32 fresh scenes: issue 8's 0.85 where the model
#: reaches it; econ-sprites-random is below it (0.742 on 200 test scenes, README), so its floor
#: guards that measured level
ECON_MIN_FG_ARI = {"econ-sprites-unique": 0.85, "econ-sprites-random": 0.62}
ECON_MODELS = sorted(ECON_MIN_FG_ARI)


@pytest.fixture(autouse=True)
def _one_thread_clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_names_lists_the_shipped_models_and_unknown_names_are_clear():
    assert set(ECON_MODELS) <= set(pretrained.names())
    with pytest.raises(pretrained.PretrainedError, match="unknown pretrained model 'nope'.*econ-sprites-unique"):
        pretrained.load("nope")
    for bad in ("../x", "", None):
        with pytest.raises(pretrained.PretrainedError):
            pretrained.path(bad)


@pytest.mark.parametrize("name", ECON_MODELS)
def test_econ_model_decomposes_fresh_scenes(name):
    model, guide = pretrained.load(name)
    record = pretrained.info(name)
    assert record["command"].startswith("python -m inference.svi")
    variant = record["config"]["dataset"].split("-")[1]
    # 32 scenes never used in training or selection: the test split under a new seed
    data = make_dataset(record["config"]["dataset"], split="test", num_scenes=32, image_size=model.image_size, seed=12345)
    torch.manual_seed(0)
    results = evaluate_econ(model, guide, data, metrics=("fg-ari",), num_samples=32, progress=False)["results"]
    assert results["fg-ari"] >= ECON_MIN_FG_ARI[name], (variant, results["fg-ari"])


def test_do_on_the_circle_expert_draws_a_red_circle():
    model, guide = pretrained.load("econ-sprites-unique")
    best = pretrained.info("econ-sprites-unique")["metrics"]["best_expert_per_class"]
    circle, background = best["circle"], best["background"]
    torch.manual_seed(0)
    scene = poutine.do(model, data={"k_1": torch.tensor(background), "k_2": torch.tensor(circle)})
    trace = poutine.trace(scene).get_trace(batch_size=32, num_layers=2)
    z = trace.nodes["z_2"]["value"]  # do() leaves the sampled k_2 in the trace; the model used `circle`
    mu, shape = model.decoder(z, experts=torch.full(z.shape[:1], circle))  # layer 2's object
    region = (shape[:, 0] > 0.5).float()  # (B, H, W): its unoccluded shape
    colour = (mu * region[:, None]).sum((2, 3)) / region.sum((1, 2)).clamp_min(1)[:, None]  # (B, 3)
    r, g, b = colour.unbind(-1)
    red = (r > 0.6) & (g < 0.4) & (b < 0.4)
    # unique colours: circles are red (255, 0, 0); some prior draws of z give no object (README)
    assert red.float().mean() >= 0.25, colour
    assert not ((g > r + 0.3) | (b > r + 0.3)).any(), colour  # never a green square or a blue triangle
    assert len(CLASS_NAMES) == 3


@pytest.mark.parametrize("name", ECON_MODELS)
def test_predictive_and_condition_work_on_the_loaded_pair(name):
    model, guide = pretrained.load(name)
    x = model(batch_size=4).detach().clamp(0, 1)
    samples = pyro.infer.Predictive(model, guide=guide, num_samples=2, return_sites=["k_1", "z_1", "x"])(x)
    assert samples["x"].shape == (2, 4, 3, model.image_size, model.image_size)
    conditioned = pyro.condition(model, data={"k_1": torch.zeros(4, dtype=torch.long)})
    trace = poutine.trace(conditioned).get_trace(x)
    assert trace.nodes["k_1"]["is_observed"] and (trace.nodes["k_1"]["value"] == 0).all()


# ------------------------------------------------------------------------------------------ GNM
def test_gnm_mnist4_finds_the_digits_of_fresh_scenes():
    from inference.evaluation.gnm import evaluate_gnm

    model, guide = pretrained.load("gnm-mnist4")
    # 32 scenes never used in training or selection: the test split under a new seed
    data = make_dataset("mnist4", split="test", num_scenes=32, image_size=model.cfg.image_size, seed=12345)
    torch.manual_seed(0)
    results = evaluate_gnm(model, guide, data, "mnist4", metrics=("box-ap", "count-accuracy", "representation", "layout"),
                           num_samples=32, progress=False)["results"]
    # shipped, on 500 test scenes (info()["metrics"]): box AP@0.5 0.741, count accuracy 0.892,
    # z_what probe 0.633 (chance 0.10), layout of inferred scenes 0.892 and of generations 0.728
    assert results["box-ap@0.5"] >= 0.6 and results["count-accuracy"] >= 0.75, results
    assert results["representation"] >= 0.4, results
    assert results["layout-inferred"] >= 0.75 and results["layout-generated"] >= 0.5, results


def test_gnm_mnist4_generations_follow_the_layout():
    from pyro import poutine

    from inference.metrics.rules import layout_mnist4

    model, _ = pretrained.load("gnm-mnist4")
    torch.manual_seed(0)
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(batch_size=64, mode=True)
    pres = trace.nodes["z_pres"]["value"] > 0.5
    boxes = model.boxes(trace.nodes["z_where"]["value"])
    centres = torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)
    valid = [layout_mnist4(centres[i][pres[i]], model.cfg.image_size)[0] for i in range(64)]
    # four digits on an axis-aligned rectangle; 0.728 of 500 generations (info()["metrics"])
    assert sum(valid) / 64 >= 0.5, sum(valid)


def test_gnm_mnist4_predictive_and_do():
    model, guide = pretrained.load("gnm-mnist4")
    torch.manual_seed(0)
    x = model(batch_size=4).detach().clamp(0, 1)
    samples = pyro.infer.Predictive(model, guide=guide, num_samples=2, return_sites=["z_pres", "z_what"])(x)
    assert samples["z_what"].shape[:3] == (2, 4, model.cfg.num_cells)
    # do(z_pres = 0) removes every object; MNIST-4 has no background, so the canvas is empty
    nothing = torch.zeros(4, model.cfg.num_cells)
    assert poutine.do(model, data={"z_pres": nothing})(batch_size=4).abs().max() < 1e-6
    assert model(batch_size=4).abs().max() > 0.5  # while undisturbed generations draw digits


def test_evaluate_takes_a_pretrained_name_and_writes_beside_the_caller(tmp_path, monkeypatch):
    from inference.evaluate import EvaluationError, evaluate

    monkeypatch.chdir(tmp_path)
    report = evaluate("econ-sprites-unique", metrics=["fg-ari"], num_samples=8, plots=False, progress=False,
                      overrides={"given_regions": True})
    assert report["results"]["regions_given"] and report["results"]["fg-ari"] == pytest.approx(1.0)
    assert (tmp_path / "eval" / "econ-sprites-unique" / "metrics_test.json").is_file()
    with pytest.raises(EvaluationError, match="num_objects"):
        evaluate("econ-sprites-unique", metrics=["fg-ari"], num_samples=8, plots=False, progress=False,
                 overrides={"given_regions": True, "num_layers": 5})


def test_unpack_makes_a_run_that_fine_tunes_from_the_shipped_weights(tmp_path):
    from click.testing import CliRunner

    from inference.svi import main as svi
    from inference.training.checkpoint import find_checkpoint, load_checkpoint

    out = tmp_path / "fine-tune"
    record = pretrained.info("econ-sprites-unique")
    path = pretrained.unpack("econ-sprites-unique", out)
    assert path == find_checkpoint(out) and (out / "config.json").is_file()
    with pytest.raises(pretrained.PretrainedError, match="already holds a run"):
        pretrained.unpack("econ-sprites-unique", out)
    step = record["step"]
    result = CliRunner().invoke(svi, ["--resume", "--amend", "--out", str(out), "--steps", str(step + 2),
                                      "--set", "num_train=16", "--set", "num_val=8", "--set", "batch_size=4",
                                      "--set", "workers=0", "--set", "val_every=0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(find_checkpoint(out))
    assert ck["step"] == step + 2 and ck["optimizer_state"]["state"]  # a fresh optimiser that took 2 steps
    moved = [k for k, v in record["model_state"].items() if v.is_floating_point() and not torch.equal(v, ck["model_state"][k])]
    assert moved and set(ck["model_state"]) == set(record["model_state"])  # the shipped weights, trained on
