"""``python -m inference.graphs``: the Graphviz source of each model and guide names their sample
sites and plates (checked on the source text, so no ``dot`` program is needed)."""
from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

pytest.importorskip("graphviz", reason="the graphviz extra is not installed (pip install -e '.[graphviz]')")

from inference import graphs  # noqa: E402


def test_the_command_writes_the_sources_of_econ(tmp_path):
    result = CliRunner().invoke(graphs.main, ["--model", "econ", "--source-only", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "econ (sprites-unique, sprites-random)" in result.output  # one graph for both datasets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["econ_sprites-unique_guide.gv", "econ_sprites-unique_model.gv"]
    model = (tmp_path / "econ_sprites-unique_model.gv").read_text()
    guide = (tmp_path / "econ_sprites-unique_guide.gv").read_text()
    for t in range(1, 5):  # T = 4 layers: k_t (expert), z_t (latent), r_t (region)
        for site in (f"k_{t}", f"z_{t}", f"r_{t}"):
            assert f"\t\t{site} [label={site}" in model and f"\t\t{site} [label={site}" in guide, site
    assert "subgraph cluster_batch" in model and "label=batch" in model and "subgraph cluster_batch" in guide
    assert "x [label=x fillcolor=gray" in model  # the observed image
    assert "x ~ LayeredNormal" in model and "z_1 ~ PresampledNormal" in guide
    assert "z_4 -> r_4" in model and "k_4 -> z_4" in guide  # dependencies


def test_gnm_graphs_have_the_cells_plate():
    drawn = graphs.graphs("gnm", "mnist4")
    model, guide = drawn["model"].source, drawn["guide"].source
    for site in ("z_g_1", "z_g_4", "z_pres", "z_where", "z_depth", "z_what"):
        assert f"{site} [label={site}" in model and f"{site} [label={site}" in guide, site
    for source in (model, guide):
        assert "subgraph cluster_batch" in source and "subgraph cluster_cells" in source
    assert "z_g_4 -> z_what" in model and "z_what -> x" in model and "z_bg" not in model  # no background on MNIST


def test_without_dot_or_graphviz_the_command_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(graphs.shutil, "which", lambda name: None)
    result = CliRunner().invoke(graphs.main, ["--model", "econ", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "apt-get install graphviz" in result.output and "--source-only" in result.output
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "graphviz" else find_spec(name, *a))
    result = CliRunner().invoke(graphs.main, ["--source-only", "--out", str(tmp_path)])
    assert result.exit_code == 1 and 'pip install -e ".[graphviz]"' in result.output
    assert not list(tmp_path.iterdir())
