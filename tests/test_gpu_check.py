"""benchmarks/gpu_check.py without a GPU: it refuses to run (exit 2, a clear message); its cases
are the authors' sizes; and its machinery (the CPU draws replayed elsewhere, the SVI steps, the
table) works, run here on the CPU with tiny models."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_without_cuda_it_exits_2_and_says_why(gpu_check, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(gpu_check.main, [])
    assert result.exit_code == 2, result.output
    assert "CUDA is not available here" in result.output and "Nothing was checked" in result.output
    assert "Traceback" not in result.output


def test_the_cases_are_the_authors_sizes(gpu_check):
    from inference.recipes import get_recipe
    from inference.recipes.settings import run_defaults

    cases = {c.name: c for c in gpu_check.all_cases()}
    assert sorted(cases) == ["convdraw-paper", "econ-paper", "genesis-paper", "gnm-arrow", "gnm-mnist", "space-defaults",
                             "vae-paper"]  # SPACE: no authors' size here
    assert cases["space-defaults"].overrides == {} and cases["space-defaults"].dataset == "mnist4"
    for case, parameters in (("gnm-mnist", 2_930_708), ("gnm-arrow", 8_636_446),  # pyro_scenes/gnm/config.py
                             ("vae-paper", 1_419_929), ("convdraw-paper", 1_577_753),  # docs/baselines.md
                             ("genesis-paper", 13_989_410)):  # docs/genesis.md
        recipe = get_recipe(cases[case].recipe)
        config = {**run_defaults(recipe, cases[case].dataset), **cases[case].overrides}
        recipe.validate_config(config)
        model, guide = recipe.build(config, torch.device("cpu"))
        assert len(gpu_check.unique_parameters(model, guide)) and \
            sum(p.numel() for p in gpu_check.unique_parameters(model, guide)) == parameters
    econ = cases["econ-paper"].overrides
    assert econ["image_size"] == 64 and econ["decoder_features"] == econ["attention_filters"] == 32
    config = {**run_defaults(get_recipe("econ"), "sprites-unique"), **econ}
    get_recipe("econ").validate_config(config)


def test_the_replayed_draws_make_the_loss_deterministic(gpu_check):
    """Without the replay two losses differ (fresh draws); with it they are equal, on any device."""
    check = gpu_check.CaseCheck(gpu_check.Case("econ-tiny", "econ", "sprites-unique", dict(image_size=16)),
                                torch.device("cpu"), batch_size=2)
    check.cpu_reference()
    assert check.row["replay"] == 0.0
    model, guide = check.build(torch.device("cpu"))
    with torch.no_grad():
        fresh = [float(check.loss(model, guide, check.images)) for _ in range(2)]
    assert fresh[0] != fresh[1]
    assert check.replayed_loss(model, guide) == check.replayed_loss(model, guide) == pytest.approx(check.cpu_loss, rel=1e-6)


def test_a_dry_run_on_the_cpu_fills_the_table(gpu_check):
    cases = [gpu_check.Case("econ-tiny", "econ", "sprites-unique", dict(image_size=16), "tiny"),
             gpu_check.Case("gnm-arrow-tiny", "gnm", "arrow", dict(preset="arrow-tiny", image_size=32), "tiny"),
             gpu_check.Case("broken", "gnm", "arrow", dict(preset="arrow-tiny"), "image size left at 64")]
    rows = gpu_check.check(cases, torch.device("cpu"), batch_size=2, steps=2, warmup=1, bf16_steps=1, rtol=1e-2,
                           validation=True, echo=lambda *a: None)
    for row in rows[:2]:
        assert row["passed"] and row["replay"] == 0.0 and row["rel_diff"] == 0.0 and row["finite"], row
        assert row["steps_per_second"] > 0 and row["bf16"].startswith("finite over 1 steps"), row
    assert "error" in rows[2] and "image_size" in rows[2]["error"]
    text = gpu_check.table(rows).splitlines()
    assert text[0].startswith("| case | parameters | CPU loss | CUDA loss | rel. diff |") and len(text) == 5
    assert text[2].startswith("| econ-tiny (tiny) |") and text[2].endswith("| yes |") and "**no**" in text[4]
