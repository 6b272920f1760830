"""``python -m datasets.preview``: every kind of bad input exits 2 (as in ``python -m inference.svi``)
and writes nothing; the number of scenes is bounded."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from datasets.preview import MAX_NUM, main

ROOT = Path(__file__).resolve().parents[1]


def preview(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("args, words", [
    (["--num", "1000000"], f"--num: must be between 1 and {MAX_NUM}, got 1000000"),
    (["--num", "0"], f"must be between 1 and {MAX_NUM}, got 0"),
    (["--num", str(MAX_NUM + 1)], f"got {MAX_NUM + 1}"),
    (["--image-size", "4"], "image too small"),                        # a DatasetError: exit 2, not 1
    (["--mnist-path", "{tmp}/nowhere"], "does not exist"),             # a DatasetError too
    (["--dataset", "arrow", "--mnist-path", "{tmp}"], "only applies to the mnist* datasets"),
    (["--dataset", "clevr"], "'clevr' is not one of"),
    (["--out", "{tmp}/grid.jpg"], "must end in .png"),
    (["--out", "{tmp}/missing/grid.png"], "does not exist"),
    (["--out", "{tmp}/folder.png"], "is a directory"),
    (["--out", "/proc/grid.png"], "--out: cannot write /proc/grid.png"),  # a folder nobody may write into
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, words):
    (tmp_path / "folder.png").mkdir()
    args = ["--dataset", "mnist4", "--num", "2", "--out", "{tmp}/grid.png", *args]
    result = preview(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    assert words.replace("{tmp}", str(tmp_path)) in result.output, result.output
    assert sorted(os.listdir(tmp_path)) == ["folder.png"] and not os.listdir(tmp_path / "folder.png")


@pytest.mark.slow
def test_largest_grid_is_written(tmp_path):
    result = subprocess.run([sys.executable, "-m", "datasets.preview", "--dataset", "sprites-unique", "--image-size",
                             "32", "--num", str(MAX_NUM), "--out", str(tmp_path / "g.png")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'g.png'} ({MAX_NUM} sprites-unique scenes" in result.stdout
