import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data, unigram_bits

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_cli_or_tasks():
    for path in (REPO / "perceiver_lm").rglob("*.py"):
        assert not _imports(path) & {"cli", "tasks"}, path


def test_real_corpus_trains_when_shared_data_is_present(tmp_path):
    data = shared_data()
    if data is None or not (data / "corpus" / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("public benchmark data not found (set PERCEIVER_LM_DATA=../shared/data)")
    from perceiver_lm import PRESETS
    from perceiver_lm.training import TrainingOptions, pretrain

    result = pretrain(
        TrainingOptions(
            data=[str(data / "corpus" / "tinyshakespeare")],
            output_dir=str(tmp_path / "run"),
            batch_size=16,
            max_steps=40,
            eval_every=40,
            save_every=40,
            eval_windows=32,
            report_to="none",
            warmup_steps=5,
            lr=2e-3,
        ),
        PRESETS["tiny"],
    )
    # 40 steps take `tiny` from uniform (8.03 bits) to within half a bit of the corpus's byte frequencies
    # (measured: 5.12 against 4.86)
    unigram = unigram_bits((data / "corpus" / "tinyshakespeare" / "input.txt").read_bytes())
    assert result.step == 40 and result.eval_metrics["bits_per_byte"] < unigram + 0.5


def test_cli_builds_its_commands_without_torch():
    """`perceiver-lm --help` answers fast: building the commands imports neither torch nor scikit-learn."""
    code = (
        "import sys; from typer.testing import CliRunner; import cli.main as m\n"
        "for args in ([], ['pretrain'], ['glue', 'train']):\n"
        "    assert CliRunner().invoke(m.app, args + ['--help']).exit_code == 0\n"
        "heavy = sorted(n for n in ('torch', 'sklearn', 'accelerate', 'datasets') if n in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _library_imports(path: Path) -> set[str]:
    """The perceiver_lm modules a file imports anywhere (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "perceiver_lm":
            names |= {f"perceiver_lm.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perceiver_lm."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("perceiver_lm.")}
    return names


def test_library_has_no_import_cycle():
    library = REPO / "perceiver_lm"
    modules = {
        ".".join(("perceiver_lm", *p.relative_to(library).with_suffix("").parts)): p
        for p in library.rglob("*.py")
        if p.stem != "__init__"
    }
    graph = {name: _library_imports(path) & set(modules) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", " -> ".join([*chain, name])
        state[name] = "open"
        for dependency in sorted(graph[name]):
            visit(dependency, [*chain, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])
    assert "perceiver_lm.model" in graph["perceiver_lm.interop"]  # the graph is read, not empty
