"""Nothing imports back up the layers: datasets < pyro_scenes < guides < inference's library
(handlers, metrics, likelihood, ...) < per-model evaluation and figures < recipes < the tools
(trainer, evaluation runner, CLIs). Imports inside functions count too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (module prefix, layer); the longest matching prefix decides
LAYERS = [
    ("datasets", 0),
    ("pyro_scenes", 1),
    ("guides", 2),
    ("inference", 3),
    ("inference.evaluation", 4),
    ("inference.figures", 4),
    ("inference.recipes", 5),
    ("inference.training", 6),
    ("inference.svi", 6),
    ("inference.runs", 6),
    ("inference.evaluate", 6),
    ("inference.pretrained", 6),
    ("inference.figures.__main__", 6),
    ("inference.likelihood.__main__", 6),
    ("inference.graphs", 6),
    ("inference.compare", 7),  # drives the trainer and the evaluation of several runs
]


def layer(module: str):
    found = [(len(prefix), level) for prefix, level in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return max(found)[1] if found else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, module: str):
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            name = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)  # "from inference import pretrained"


SOURCES = sorted(p for top in ("datasets", "pyro_scenes", "guides", "inference") for p in (ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_goes_up_a_layer(path):
    module = module_name(path)
    own = layer(module)
    up = sorted({name for name in imported(path, module) if (layer(name) or 0) > own and not module.startswith(name)})
    assert not up, f"{module} (layer {own}) imports {up}"
