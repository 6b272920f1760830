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
