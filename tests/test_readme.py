"""README.md tells the truth: its python snippets run as written, and every run folder its commands
read is one that a training command of the README writes."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pyro
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str):
    """``(section heading, code)`` of every fenced block in ``language``, in order."""
    out = []
    for m in BLOCK.finditer(README):
        if m.group(1) == language:
            heading = re.findall(r"^## (.+)$", README[:m.start()], re.M)[-1]
            out.append((heading, m.group(2)))
    return out


def python_sections():
    """Each section's python blocks joined: a section's snippets continue one another."""
    sections = {}
    for heading, code in blocks("python"):
        sections[heading] = sections.get(heading, "") + code
    return sorted(sections.items())


@pytest.mark.parametrize("heading, code", python_sections(), ids=[h for h, _ in python_sections()])
def test_python_snippets_run(heading, code):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    exec(compile(code, f"README.md, section {heading!r}", "exec"), {"__name__": "readme"})


def commands():
    """The shell commands of the README's bash blocks (continuation lines joined, comments dropped)."""
    out = []
    for _, code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "-m" in words:
                out.append(words[words.index("-m") + 1:])
    return out


def test_run_folders_read_are_written_by_a_training_command():
    import inference.recipes as recipes

    written, read = set(), set()
    for module, *args in commands():
        if module == "inference.svi" and "--resume" not in args:
            model = args[args.index("--model") + 1]
            dataset = args[args.index("--dataset") + 1] if "--dataset" in args else recipes.get_recipe(model).datasets[0]
            written.add(args[args.index("--out") + 1] if "--out" in args else f"runs/{model}-{dataset}")
        elif module != "inference.svi":
            read |= {"/".join(Path(a).parts[:2]) for a in args if a.startswith(("runs/", "checkpoints/"))}
    assert read and read <= written, read - written
