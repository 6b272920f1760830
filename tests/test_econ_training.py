"""`python -m inference.svi --model econ`: exact resume, figures, bad input."""
import json

import pytest
import torch
from click.testing import CliRunner

from inference.svi import main
from inference.training import find_checkpoint, load_checkpoint

TINY = ["--model", "econ", "--batch-size", "4", "--num-train", "16", "--image-size", "16",
        "--set", "num_val=4", "--set", "val_items=4", "--set", "val_every=2", "--set", "cache_dir=\"\"",
        "--set", "decoder_features=4", "--set", "decoder_layers=2", "--set", "encoder_features=4",
        "--set", "encoder_layers=2", "--set", "attention_filters=4", "--set", "attention_blocks=3"]


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_resume_equals_one_run(tmp_path):
    one, split = tmp_path / "one", tmp_path / "split"
    assert run(*TINY, "--steps", "4", "--out", str(one)).exit_code == 0
    assert run(*TINY, "--steps", "2", "--out", str(split)).exit_code == 0
    assert run(*TINY, "--steps", "4", "--out", str(split), "--resume").exit_code == 0
    a, b = load_checkpoint(find_checkpoint(one)), load_checkpoint(find_checkpoint(split))
    assert a["step"] == b["step"] == 4
    for key in ("model_state", "guide_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    figures = sorted(p.name for p in (one / "figures").iterdir())
    assert figures == ["decomposition.png", "expert_samples.png", "layered_generation.png"]
    config = json.loads((one / "config.json").read_text())
    assert config["model"] == "econ" and config["beta"] == 9.54 and config["gamma"] == 0.52


@pytest.mark.parametrize("bad, message", [
    (["--dataset", "mnist4"], "mnist4"),
    (["--set", "beta=-1"], "beta"),
    (["--set", "num_experts=0"], "num_experts"),
    (["--image-size", "18"], "image_size"),
])
def test_bad_input_names_the_problem(tmp_path, bad, message):
    result = CliRunner().invoke(main, [*TINY, "--steps", "1", "--out", str(tmp_path / "r"), *bad])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_run_saved_before_newer_settings_existed_still_resumes(tmp_path):
    """Runs made before num_objects, the temperature and the per-pixel competition existed resume
    with the values they were trained with (the recipe's legacy_defaults), else today's defaults."""
    from inference.recipes.econ import ECONRecipe
    from inference.training.checkpoint import save_checkpoint

    out = tmp_path / "old"
    assert run(*TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    path = find_checkpoint(out)
    ckpt = load_checkpoint(path)
    added = ["num_objects", "competition_per_pixel", "temperature", "temperature_final", "temperature_steps"]
    assert set(ECONRecipe.legacy_defaults) <= set(added)
    for key in added:
        ckpt["config"].pop(key)
    path.unlink()
    save_checkpoint(out / "ckpt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in added}))
    result = run("--resume", "--out", str(out), "--steps", "3")
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(find_checkpoint(out))
    assert resumed["step"] == 3
    # trained summed: stays so (legacy_defaults); the others take today's defaults, which they were trained with
    assert resumed["config"]["competition_per_pixel"] is False
    assert [resumed["config"][k] for k in added if k != "competition_per_pixel"] == [3, 1.0, 1.0, 0]


def test_given_regions_train_from_the_cli_on_the_visible_masks(tmp_path, monkeypatch):
    """--set given_regions=true: every training and validation batch carries the visible masks and
    the loss conditions r_t on them (generative MONet, docs/econ.md)."""
    import inference.objectives as objectives
    from inference.decompose import regions_from_masks

    seen = []
    loss = objectives.econ_loss

    def spy(model, guide, x, *args, regions=None, **kwargs):
        seen.append(regions)
        return loss(model, guide, x, *args, regions=regions, **kwargs)

    monkeypatch.setattr(objectives, "econ_loss", spy)
    out = tmp_path / "monet"
    result = run(*TINY, "--steps", "2", "--set", "num_experts=1", "--set", "given_regions=true", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert seen and all(r is not None and r.shape[1:] == (4, 1, 16, 16) for r in seen)
    assert all(torch.equal(r.sum(1), torch.ones_like(r[:, 0])) for r in seen), "the layers partition each image"
    assert torch.equal(regions_from_masks(torch.zeros(1, 3, 16, 16, dtype=torch.bool))[0, 0], torch.ones(1, 16, 16))
    assert json.loads((out / "config.json").read_text())["given_regions"] is True
