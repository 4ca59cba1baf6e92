"""The code's shape: layered imports without cycles, file and function sizes within bounds."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "anetrain"

# Lowest first. A module may import from its own layer and the layers below, never above.
LAYERS = [
    ["anetrain.errors"],
    ["anetrain", "anetrain.config", "anetrain.cli"],
    ["anetrain.native", "anetrain.rope", "anetrain.params"],
    ["anetrain.mil", "anetrain.optim", "anetrain.lora", "anetrain.formats"],
    ["anetrain.model"],
    ["anetrain.backends"],
    ["anetrain.run", "anetrain.report", "anetrain.phases", "anetrain.dist"],
    ["anetrain.train", "anetrain.sample", "anetrain.export", "anetrain.fuse", "anetrain.eval",
     "anetrain.bench", "anetrain.__main__", "anetrain.dashboard", "anetrain.plot", "anetrain.probe",
     "anetrain.probe_report"],
]  # fmt: skip

MAX_FILE_LINES = 600
# The file limit covers every source file of these directories (and the top level); generated and
# data files are exempt: MIL goldens, test fixtures, and the cffi sources of an in-place build.
SOURCE_DIRS = ["python", "scripts", "csrc", "tests"]
SOURCE_SUFFIXES = {".py", ".c", ".h", ".m", ".sh", ".mk"}
NOT_SOURCE = ["tests/golden/", "tests/fixtures/", "python/anetrain/_native.c",
              "python/anetrain/_ane.m"]  # fmt: skip
MAX_FUNCTION_LINES = 80
LONG_ALLOWED = {"train.py:train", "train.py:build_parser", "sample.py:build_parser",
                "export.py:build_parser"}  # the training loop and argparse builders  # fmt: skip


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules `name` imports anywhere in its body (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from anetrain.x import y`: y may itself be a module
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("anetrain"):
                out.add(t)
    return out


def _layer(mod: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (i, len(n))
    assert best is not None, f"{mod} is in no layer: add it to LAYERS"
    return best[0]


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items() if not m.startswith("anetrain._")}


def test_no_module_imports_a_layer_above_it():
    bad = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
           for m, deps in _graph().items() for t in deps
           if _layer(t) > _layer(m) and not t.startswith("anetrain._")]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if t == m.rpartition(".")[0] or m == t.rpartition(".")[0]:
                continue  # a package and its own submodules
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t in graph and not state.get(t):
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [m])


def _source_files() -> list[str]:
    """Repository-relative paths of the files the line limit covers."""
    out = []
    for path in [p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*")] + list(ROOT.glob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if path.suffix not in SOURCE_SUFFIXES or not path.is_file() or "__pycache__" in rel:
            continue
        if not any(rel.startswith(n) for n in NOT_SOURCE):
            out.append(rel)
    return sorted(out)


def test_the_source_glob_finds_every_kind_of_source_file():
    files = set(_source_files())
    want = ["setup.py", "python/anetrain/train.py", "scripts/make_stories.py",
            "scripts/build_embedded_data.sh", "scripts/objc_targets.mk", "csrc/anet.h",
            "csrc/ops.c", "csrc/ffi_ane.py", "csrc/ane/ane_runtime.m", "tests/conftest.py",
            "tests/c/test_fp16.c", "tests/mock/ane_mock.m"]  # fmt: skip
    assert not [w for w in want if w not in files]
    assert not [f for f in files if f.startswith(("tests/golden/", "tests/fixtures/", "data/"))]


def test_no_source_file_over_the_limit():
    bad = []
    for rel in _source_files():
        n = len((ROOT / rel).read_text(encoding="utf-8").splitlines())
        if n > MAX_FILE_LINES:
            bad.append(f"{rel}: {n} lines")
    assert not bad, "\n".join(bad)


def test_function_sizes():
    bad = []
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(PKG).as_posix()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and f"{rel}:{node.name}" not in LONG_ALLOWED:
                    bad.append(f"{rel}:{node.name}: {n} lines")
    assert not bad, "\n".join(bad)


def test_the_training_loop_stays_flat():
    tree = ast.parse((PKG / "train.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    assert fn.end_lineno - fn.lineno + 1 <= 120
