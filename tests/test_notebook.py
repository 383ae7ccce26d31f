"""notebooks/banglaslm_colab.ipynb runs end to end on the CPU, with short training (its
"parameters" cell overridden the way papermill does: a cell injected after it), so the
course's notebook cannot rot. Executed by nbclient in a fresh kernel of this interpreter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "banglaslm_colab.ipynb"


def outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_colab_notebook_runs_on_the_cpu(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"MAX_ITERS = 40\nFINETUNE_ITERS = 10\nOUT = {json.dumps(str(tmp_path / 'nb'))}",
        metadata={"tags": ["injected-parameters"]}))
    again = nbformat.from_dict(json.loads(json.dumps(nb)))  # the same notebook, for a second run
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "training on the CPU" in text
    assert "40 steps in" in text and "(now at 40)" in text and "bits/char" in text
    assert text.count("» ") == 3                                 # three generations
    assert "তোমার নাম কী?" in text and "সহকারী:" in text        # the scripted chat ran and was answered
    assert "pick the same next token: True" in text
    out = tmp_path / "nb"
    assert (out / "run" / "loss.png").is_file() and (out / "chat" / "checkpoints" / "best.safetensors").is_file()
    assert (out / "hf" / "config.json").is_file() and (out / "model.gguf").stat().st_size > 100_000
    plots = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert plots  # the live loss plot was shown

    # Run again on the same folder, as a student re-running every cell does, with more steps:
    # training and fine-tuning continue from their checkpoints instead of failing or restarting.
    again.cells[index + 1].source = again.cells[index + 1].source.replace("MAX_ITERS = 40", "MAX_ITERS = 50")
    nbclient.NotebookClient(again, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(outputs_text(c) for c in again.cells if c.cell_type == "code")
    assert "10 steps in" in text and "(now at 50)" in text  # this session's steps, and where the run is
    assert "pick the same next token: True" in text


def test_the_install_cell_finds_the_repository_or_says_what_to_set(tmp_path, monkeypatch):
    """The install cell once ran `pip install banglaslm`, a name no package index holds: on a
    fresh runtime the notebook failed at its first cell with pip's error."""
    import ast

    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    (source,) = ["".join(c["source"]) for c in cells if "def banglaslm_source" in "".join(c["source"])]
    (func,) = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]
    namespace = {"Path": Path}
    exec(compile(ast.Module([func], []), "install cell", "exec"), namespace)
    find = namespace["banglaslm_source"]

    assert find("git+https://example.org/banglaslm") == "git+https://example.org/banglaslm"
    monkeypatch.chdir(NOTEBOOK.parent)  # the notebook opened from a clone of the repository
    assert find("") == str(NOTEBOOK.parents[1])
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "another"\n')
    monkeypatch.chdir(tmp_path)
    if not Path("/content/banglaslm/pyproject.toml").exists():
        with pytest.raises(RuntimeError, match="set BANGLASLM_SOURCE in the cell above"):
            find("")


def test_code_shown_in_the_notebooks_text_imports_what_it_uses():
    """A ```python block in a markdown cell is pasted into a cell as it stands: every name it uses
    is imported or assigned in it (the course section called evaluate_file unimported)."""
    import ast
    import builtins
    import re

    blocks = [block for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
              if cell["cell_type"] == "markdown"
              for block in re.findall(r"```python\n(.*?)```", "".join(cell["source"]), re.S)]
    assert blocks
    for block in blocks:
        tree = ast.parse(block)
        bound = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        bound |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        assert used <= bound | set(dir(builtins)), (used - bound - set(dir(builtins)), block)
        for node in ast.walk(tree):  # and what it imports exists
            if isinstance(node, ast.ImportFrom):
                module = __import__(node.module, fromlist=["_"])
                assert all(hasattr(module, alias.name) for alias in node.names), block
