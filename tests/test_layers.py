"""The package's layers: imports run one way (front ends → server → the four wings → data →
core → ground), and the four wings never import each other. Read from the source of every
module, so a new import in the wrong direction fails here before anyone has to find it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "banglaslm"

GROUND = {"errors", "fileio", "text", "config"}
CORE = {"tokenizer", "tokenizer_import", "chat_template", "model", "quantize", "checkpoint", "runfolder"}
FRONT = {"cli", "__main__", "quickstart", "report", "chat", "lm_eval_run", "lm_eval_model", "__init__"}
WINGS = {"training", "generation", "evaluation", "interop"}
RANKS = {"ground": 0, "core": 1, "data": 2, "wing": 3, "server": 4, "front": 5}


def layer_of(module: str) -> tuple[str, str]:
    """(layer, room) of a dotted module name inside the package ('data.loader', 'text', ...)."""
    top = module.split(".")[0]
    if top in GROUND:
        return "ground", top
    if top in CORE:
        return "core", top
    if top == "data":
        return "data", top
    if top in WINGS:
        return "wing", top
    if top == "server":
        return "server", top
    if top in FRONT:
        return "front", top
    raise AssertionError(f"module {module!r} is in no layer; add it to tests/test_layers.py")


def package_imports(root: Path) -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of the package by itself under `root`."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        is_init = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_init and len(parts) > 1 else parts)
        package = parts[:-1]  # the package a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                    target = base + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == root.name:
                    target = node.module.split(".")[1:]
                else:
                    continue
                for alias in node.names:  # `from . import x` may name a module
                    name = target + [alias.name]
                    is_module = (root.joinpath(*name).with_suffix(".py").is_file()
                                 or (root.joinpath(*name) / "__init__.py").is_file())
                    out.append((module, ".".join(name if is_module else target) or "__init__"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == root.name:
                        out.append((module, ".".join(alias.name.split(".")[1:]) or "__init__"))
    return out


def violations(root: Path) -> list[str]:
    bad = []
    for source, target in package_imports(root):
        (src_layer, src_room), (dst_layer, dst_room) = layer_of(source), layer_of(target)
        if RANKS[dst_layer] > RANKS[src_layer]:
            bad.append(f"{source} ({src_layer}) imports {target} ({dst_layer}): upward")
        elif src_layer == dst_layer == "wing" and src_room != dst_room:
            bad.append(f"{source} imports {target}: one wing imports another")
    return bad


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        layer_of(".".join(parts))


def test_imports_run_one_way():
    assert violations(PACKAGE) == []


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "banglaslm"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("files, expected", [
    ({"text.py": "from .tokenizer import Tokenizer\n", "tokenizer.py": ""}, "text (ground) imports tokenizer (core)"),
    ({"model.py": "from .data.loader import x\n", "data/__init__.py": "", "data/loader.py": ""}, "upward"),
    ({"generation/__init__.py": "", "generation/engine.py": "from ..training import optim\n",
      "training/__init__.py": "", "training/optim.py": ""}, "one wing imports another"),
    ({"data/__init__.py": "", "data/prepare.py": "import banglaslm.server.app\n",
      "server/__init__.py": "", "server/app.py": ""}, "data.prepare (data) imports server.app (server)"),
    ({"interop/__init__.py": "", "interop/hf.py": "def f():\n    from ..report import x\n", "report.py": ""},
     "interop.hf (wing) imports report (front)"),
])
def test_the_check_catches_wrong_way_imports(tmp_path, files, expected):
    found = violations(_fake_package(tmp_path, files))
    assert len(found) == 1 and expected in found[0], found


def test_the_check_allows_the_right_way(tmp_path):
    root = _fake_package(tmp_path, {
        "errors.py": "", "text.py": "from .errors import UserError\n", "tokenizer.py": "from .text import normalize\n",
        "data/__init__.py": "", "data/prepare.py": "from ..tokenizer import Tokenizer\nfrom . import loader\n",
        "data/loader.py": "", "training/__init__.py": "", "training/trainer.py": "from ..data.prepare import x\n",
        "server/__init__.py": "", "server/app.py": "from ..training.trainer import x\n",
        "cli.py": "from .server.app import x\n"})
    assert violations(root) == []


def test_no_module_imports_the_package_by_name_at_run_time():
    # importlib.import_module("banglaslm...") or __import__ would get past the import check above.
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                assert name not in ("importlib.import_module", "__import__", "import_module"), (path, name)
