"""python -m inference.evaluate: error paths and end-to-end runs on tiny untrained checkpoints."""
import json
import math

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


# ------------------------------------------------------------------------------ oracles
# A guide that returns the ground truth of each held-out scene must score perfectly through
# inference.evaluate: anything lower is a bug of the evaluation (layer order, box coordinates,
# matching), not of a model. The oracle finds each image's scene in the split by its pixels.
def _truth(recipe, config, n):
    from inference.evaluation.data import scenes

    batch = scenes(recipe.make_dataset(config, "test"), 0, n)
    index = {img.numpy().tobytes(): i for i, img in enumerate(batch["image"])}
    assert len(index) == n
    return batch, index


def _scene_index(index, x):
    return torch.tensor([index[img.detach().cpu().numpy().tobytes()] for img in x])


class ECONOracle(torch.nn.Module):
    """ECON's guide sites with the truth: layer t holds object t - 2 (the objects are painted in
    index order, so the last one is the front layer T), layer 1 the background; the winning
    expert is the object's class (background: expert K - 1); z_t = (scene, object) so that the
    oracle decoder below draws the object's true full shape."""

    def __init__(self, model, truth, index):
        super().__init__()
        self.num_experts, self.num_layers, self.latent_dim = model.num_experts, model.num_layers, model.latent_dim
        self.truth, self.index = truth, index

    def forward(self, x, batch_size=None, num_layers=None):
        import pyro.distributions as dist

        idx = _scene_index(self.index, x)
        B, K = len(idx), self.num_experts
        labels, seg = self.truth["labels"][idx], self.truth["segmentation"][idx]
        T = num_layers or self.num_layers
        assert T == labels.shape[1] + 1
        with pyro.plate("batch", B, dim=-1):
            for t in range(T, 0, -1):
                obj = t - 2
                expert = labels[:, obj] if obj >= 0 else torch.full((B,), K - 1)
                score = torch.full((B, K), 1e3)
                score[torch.arange(B), expert] = 0.0
                pyro.sample(f"k_{t}", dist.Categorical(logits=-score), infer={"competition_scores": score})
                z = torch.zeros(B, self.latent_dim)
                z[:, 0], z[:, 1] = idx.float(), float(obj)
                pyro.sample(f"z_{t}", dist.Delta(z, event_dim=1))
                pyro.sample(f"r_{t}", dist.Delta((seg == obj + 1).float()[:, None], event_dim=3))


class ECONOracleDecoder(torch.nn.Module):
    """z = (scene, object) -> the object's true colour and full mask (background: all ones)."""

    def __init__(self, truth):
        super().__init__()
        self.truth = truth

    def forward(self, z, experts=None):
        idx, obj = z[..., 0].long(), z[..., 1].long()
        masks = torch.where((obj >= 0)[..., None, None], self.truth["masks"][idx, obj.clamp_min(0)], True)
        colours = torch.where((obj >= 0)[..., None], self.truth["colors"][idx, obj.clamp_min(0)], self.truth["background_color"][idx])
        return colours[..., None, None] * torch.ones_like(masks[..., None, :, :], dtype=torch.float), masks[..., None, :, :].float()


def test_an_oracle_econ_guide_scores_perfectly_through_evaluate(tmp_path, econ_run, monkeypatch):
    import inference.evaluate as evaluation

    real_open_run = evaluation.open_run
    n = 12

    def open_oracle(path, device="cpu", overrides=None):
        file, recipe, config, model, guide, step = real_open_run(path, device, overrides)
        truth, index = _truth(recipe, config, n)
        model.decoder = ECONOracleDecoder(truth)
        return file, recipe, config, model, ECONOracle(model, truth, index), step

    monkeypatch.setattr(evaluation, "open_run", open_oracle)
    report = evaluate(econ_run, num_samples=n, batch_size=5, out=tmp_path / "oracle.json", plots=False, progress=False)
    res = report["results"]
    for key in ("ari", "fg-ari", "msc", "specialisation", "specialisation_with_background", "shape-iou"):
        assert res[key] == pytest.approx(1.0, abs=1e-6), (key, res[key])
    assert res["shape-iou_count"] > 0 and res["experts_distinct"]
    assert res["best_expert_per_class"] == {"circle": 0, "square": 1, "triangle": 2, "background": 3}
    assert res["win_share"][0] == [0.0, 0.0, 0.0, 1.0]  # layer 1 (the back) is always the background expert


class GNMOracleEncoder(torch.nn.Module):
    """f^x of the right shape whose every entry is the scene's index."""

    def __init__(self, cfg, index):
        super().__init__()
        self.cfg, self.index = cfg, index

    def forward(self, x):
        idx = _scene_index(self.index, x).float()
        return idx[:, None, None, None].expand(-1, self.cfg.hidden, self.cfg.grid, self.cfg.grid).contiguous()


class GNMOracleZs(torch.nn.Module):
    """z^s of the truth: each object in the cell holding its box centre (cell = row * G + column),
    z_where raw from its pixel box by the inverse of docs/gnm.md's transform, written out here:
    ``s = sigmoid(raw_0)``, ``r = exp(raw_1)``, widths ``(s / sqrt(r), s sqrt(r))`` of the image,
    centre ``(2 / G) (cell + 0.5 + tanh(raw_2:4)) - 1``."""

    def __init__(self, cfg, truth):
        super().__init__()
        self.cfg, self.truth = cfg, truth

    def forward(self, feat):
        G, S = self.cfg.grid, self.cfg.image_size
        idx = feat[:, 0, 0, 0].round().long()
        B, cells = len(idx), G * G
        out = dict(pres_logits=torch.full((B, cells), -8.0), where_loc=torch.zeros(B, cells, 4),
                   depth_loc=torch.zeros(B, cells, 1), what_loc=torch.zeros(B, cells, self.cfg.z_what_dim))
        for b, i in enumerate(idx.tolist()):
            for (x0, y0, x1, y1), ok in zip(self.truth["boxes"][i].tolist(), self.truth["valid"][i].tolist()):
                if not ok:
                    continue
                col, row = int((x0 + x1) / 2 // (S / G)), int((y0 + y1) / 2 // (S / G))
                cell = row * G + col
                assert out["pres_logits"][b, cell] < 0, "two objects in one cell: the oracle cannot place both"
                wx, wy = (x1 - x0) / S, (y1 - y0) / S
                s, r = math.sqrt(wx * wy), wy / wx
                shift_x, shift_y = (x0 + x1) / 2 / (S / G) - col - 0.5, (y0 + y1) / 2 / (S / G) - row - 0.5
                out["pres_logits"][b, cell] = 8.0
                out["where_loc"][b, cell] = torch.tensor([math.log(s / (1 - s)), math.log(r), math.atanh(shift_x), math.atanh(shift_y)])
        out.update(where_scale=torch.ones_like(out["where_loc"]), depth_scale=torch.ones_like(out["depth_loc"]),
                   what_scale=torch.ones_like(out["what_loc"]))
        return out


def test_s_acc_of_reconstructions_judges_the_deterministic_reconstructions(tmp_path, gnm_run, monkeypatch):
    import inference.evaluation.gnm as gnm_evaluation
    from inference.evaluation.data import scenes
    from inference.figures.gnm import reconstruct
    from inference.runs import open_run

    judged = []

    def fake_checker(images, dataset_name, progress=False, **options):
        judged.append(images)
        return {"s-acc": 0.25, "s-acc_reasons": {"3 digits, expected 4": 3}}, None

    monkeypatch.setattr(gnm_evaluation, "structure_results", fake_checker)
    report = evaluate(gnm_run, metrics=["s-acc-recon"], num_samples=5, batch_size=2, out=tmp_path / "r.json", plots=False,
                      progress=False)
    assert report["results"]["s-acc-recon"] == 0.25 and "s-acc-recon_reasons" in report["results"]
    assert "s-acc" not in report["results"]
    _, recipe, config, model, guide, _ = open_run(gnm_run)
    images = scenes(recipe.make_dataset(config, "test"), 0, 5)["image"]
    assert len(judged) == 1 and torch.allclose(judged[0], reconstruct(model, guide, images)["recon"].clamp(0, 1), atol=1e-5)


def test_an_oracle_gnm_guide_scores_perfectly_through_evaluate(tmp_path, gnm_run, monkeypatch):
    """The guide's own infer() runs, on an encoder and z^s network that return the truth, so
    the boxes pass through the model's z_where -> pixel transform before they are scored."""
    import inference.evaluate as evaluation

    real_open_run = evaluation.open_run
    n = 12

    def open_oracle(path, device="cpu", overrides=None):
        file, recipe, config, model, guide, step = real_open_run(path, device, overrides)
        truth, index = _truth(recipe, config, n)
        guide.encoder = GNMOracleEncoder(model.cfg, index)
        model.zs_net = GNMOracleZs(model.cfg, truth)
        return file, recipe, config, model, guide, step

    monkeypatch.setattr(evaluation, "open_run", open_oracle)
    report = evaluate(gnm_run, metrics=["box-ap", "count-accuracy"], num_samples=n, batch_size=5, out=tmp_path / "oracle.json",
                      plots=False, progress=False)
    res = report["results"]
    assert res["box-ap@0.5"] == pytest.approx(1.0) and res["box-ap@[.5:.95]"] == pytest.approx(1.0)
    assert res["count-accuracy"] == 1.0


@pytest.mark.slow
def test_figures_module_entry_point_on_a_gnm_run(tmp_path_factory, tmp_path):
    """``python -m inference.figures`` in a fresh process: GNM's three figures, one path per line."""
    run = _make_run(tmp_path_factory.mktemp("gnm_tiny"), "gnm", "arrow", preset="arrow-tiny", image_size=32, z_what_dim=6)
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    res = subprocess.run([sys.executable, "-m", "inference.figures", str(run), "--out", str(tmp_path), "--num-images", "2"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    written = res.stdout.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["gnm_reconstructions.png", "gnm_generations.png", "gnm_zs_resampling.png"]
    assert all(Path(p).parent == tmp_path and Path(p).stat().st_size > 1000 for p in written)


def test_s_acc_layout_applies_the_layout_rule_to_the_checkers_detections(monkeypatch):
    """Two generations: four digits on a rectangle with the wrong classes (fails S-Acc, passes the
    layout) and three digits (fails both)."""
    import inference.evaluation.gnm as gnm_evaluation
    from inference.metrics import structure
    from inference.metrics._detector import Detections

    def found(centres):
        n = len(centres)
        return Detections(torch.tensor(centres, dtype=torch.float), torch.zeros(n, dtype=torch.long), torch.ones(n), torch.zeros(n, 0))

    class FakeChecker:
        image_size, info = 128, {}

        def check(self, images, progress=False):
            dets = [found([[30, 30], [90, 30], [90, 90], [30, 90]]), found([[30, 30], [90, 30], [90, 90]])]
            return structure.StructureResult(torch.tensor([False, False]), ["wrong digits", "3 digits"], dets)

    monkeypatch.setattr(structure.StructureChecker, "load", classmethod(lambda cls, *a, **k: FakeChecker()))
    results, _ = gnm_evaluation.structure_results(torch.zeros(2, 1, 128, 128), "mnist4")
    assert results["s-acc"] == 0.0 and results["s-acc-layout"] == 0.5
