"""Every command line of the library: ``-h`` and ``--help`` print the usage and exit 0, every option
is documented, ``--device`` refuses what the library cannot run on with a clean error (exit 2,
no traceback), and the console scripts of pyproject.toml point at these commands."""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]

#: module:attribute of each click command (python -m forms and console scripts)
COMMANDS = {
    "inference.svi": "inference.svi:main",
    "inference.evaluate": "inference.evaluate:cli",
    "inference.likelihood": "inference.likelihood.__main__:main",
    "inference.figures": "inference.figures.__main__:main",
    "inference.pretrained": "inference.pretrained.__main__:cli",
    "datasets.preview": "datasets.preview:main",
    "inference.graphs": "inference.graphs:main",
    "inference.compare": "inference.compare.__main__:main",
}
#: console script -> the python -m form it stands for
SCRIPTS = {
    "pyro-scenes-train": "inference.svi",
    "pyro-scenes-evaluate": "inference.evaluate",
    "pyro-scenes-likelihood": "inference.likelihood",
    "pyro-scenes-figures": "inference.figures",
    "pyro-scenes-pretrained": "inference.pretrained",
    "pyro-scenes-preview": "datasets.preview",
    "pyro-scenes-graphs": "inference.graphs",
    "pyro-scenes-compare": "inference.compare",
}
#: scripts in benchmarks/ (run as ``python benchmarks/NAME.py``), each with a click ``main``
BENCHMARKS = ["bench_datasets", "bench_econ", "bench_gnm", "bench_gnm_memo", "checker_shift", "gpu_check"]
#: the commands that take ``--device``
DEVICE_COMMANDS = ["inference.evaluate", "inference.likelihood", "inference.figures"]


def command(name: str) -> click.Command:
    module, attr = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def benchmark(name: str, monkeypatch) -> click.Command:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # bench_gnm_memo imports bench_gnm
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


def all_commands(cmd: click.Command, path=()):
    """``(path, command)`` of ``cmd`` and, for a group, of each of its subcommands."""
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from all_commands(sub, path + (name,))


def check_help(cmd: click.Command, prefix=()):
    for path, _ in all_commands(cmd):
        for flag in ("-h", "--help"):
            result = CliRunner().invoke(cmd, [*prefix, *path, flag])
            assert result.exit_code == 0, (path, flag, result.output)
            assert result.output.startswith("Usage:"), (path, flag, result.output)


def check_options_documented(cmd: click.Command):
    for path, sub in all_commands(cmd):
        bare = [p.opts[0] for p in sub.params if isinstance(p, click.Option) and not p.help]
        assert not bare, f"{' '.join(path) or 'the command'}: options without help: {bare}"


@pytest.mark.parametrize("name", COMMANDS)
def test_h_and_help_print_the_usage(name):
    check_help(command(name))


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "inference.svi"])  # svi: test_svi_cli.py
def test_every_option_has_help(name):
    check_options_documented(command(name))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmarks_take_h(name, monkeypatch):
    main = benchmark(name, monkeypatch)
    check_help(main)
    check_options_documented(main)


def test_structure_checker_takes_h(capsys):
    from inference.metrics.structure import main

    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith("Usage:")


@pytest.mark.parametrize("name", DEVICE_COMMANDS)
@pytest.mark.parametrize("device, words", [("tpu", "'tpu' is not a device"), ("cuda:x", "is not a device"),
                                           ("cpu:1", "is not a device")])
def test_a_device_the_library_does_not_know_is_a_clean_usage_error(name, device, words, tmp_path):
    result = CliRunner().invoke(command(name), [str(tmp_path / "run"), "--device", device])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--device'" in result.output and words in result.output, result.output
    assert "cpu, cuda or cuda:N" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_cuda_on_a_machine_without_it_says_so(name, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(command(name), [str(tmp_path / "run"), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available here" in result.output, result.output


def test_parse_device():
    import torch

    from inference.devices import parse_device

    assert parse_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu", "mps", "cuda:", "cuda:-1", "cpu:0", ""):
        with pytest.raises(click.BadParameter):
            parse_device(bad)


def test_parse_device_counts_the_gpus(monkeypatch):
    import torch

    from inference.devices import parse_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda") == torch.device("cuda")
    assert parse_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(click.BadParameter, match="2 CUDA device"):
        parse_device("cuda:2")


@pytest.mark.slow
@pytest.mark.parametrize("module", ["inference.evaluate", "inference.likelihood", "inference.figures"])
def test_python_m_forms_take_h_and_refuse_a_tpu(module, tmp_path):
    """The ``python -m`` entry points themselves (before issue 13 these three rejected ``-h``)."""
    run = lambda *a: subprocess.run([sys.executable, "-m", module, *a], cwd=ROOT, capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    helped = run("-h")
    assert helped.returncode == 0 and helped.stdout.startswith(f"Usage: python -m {module}"), helped.stderr
    refused = run(str(tmp_path / "run"), "--device", "tpu")
    assert refused.returncode == 2 and "'tpu' is not a device" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def declared_scripts() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_console_scripts_are_declared_for_each_command():
    assert declared_scripts() == {script: COMMANDS[module] for script, module in SCRIPTS.items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_scripts_point_at_importable_click_commands(script):
    module, attr = declared_scripts()[script].split(":")
    target = getattr(importlib.import_module(module), attr)
    assert isinstance(target, click.Command)
    check_help(target)


@pytest.mark.slow
def test_installed_console_script_runs():
    """Where the package is installed with its scripts (``pip install -e .``), one runs by its name."""
    path = Path(sysconfig.get_path("scripts")) / "pyro-scenes-evaluate"
    if not path.exists():
        pytest.skip(f"{path} is not installed (pip install -e . installs the console scripts)")
    result = subprocess.run([str(path), "-h"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0 and result.stdout.startswith("Usage: pyro-scenes-evaluate"), result.stderr
