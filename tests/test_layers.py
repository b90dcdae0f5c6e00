"""The Python package follows its layers (ARCHITECTURE.md, section 1).

Checked from the source with ``ast`` (no import needed):

* a module imports, at its top level (what runs at import, ``if
  TYPE_CHECKING:`` blocks excepted), only modules of its own layer or below;
* those top-level imports have no cycle, within a layer too;
* no function imports a corral module, except where ``LAZY`` says why (an
  entry point whose imports need optional dependencies): such an import
  either dodges a cycle or crosses a layer upwards. ``DEBTS`` lists the ones
  left in the modules rewritten in parallel with issue 12, to remove.

And in a fresh interpreter: every module imports, in layer order, with
RuntimeWarnings as errors; ``python -m corral._child`` starts without
runpy's warning that the module was imported already (the reason
``_child`` must be imported by nothing in the package).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "corral"

#: Bottom to top. A module imports from its own layer or below. A module
#: of the package must be placed here (the test says which is missing).
LAYERS: list[set[str]] = [
    {"_core"},
    {"errors", "_fds", "_torch", "_pickle", "_forked", "_state", "_shm_arrays"},
    {"synchronize", "queues", "joinable", "connection", "aio", "shared", "deadlock", "sharedctypes", "_childio"},
    {"process", "_child"},
    {"_executor", "threads", "_progress"},
    {"pool", "_worker", "_forkserver"},
    {"cluster", "mp_pool", "context", "dataloader"},
    # The package itself and its tools: the command line, the demo, the
    # benchmark and soak runners.
    {"__init__", "__main__", "_info", "_bench", "_soak", "demo"},
]

#: (importer, imported) function-level imports that are lazy by design.
LAZY: dict[tuple[str, str], str] = {
    ("__main__", "demo"): "the demo imports numpy (and scikit-learn) at its top, the package does not",
    ("__main__", "_soak"): "the soak imports numpy at its top, the package does not",
}

#: Top-level imports of a higher layer left in modules rewritten in
#: parallel with issue 12: to remove, not to add to.
UPWARD_DEBTS: set[tuple[str, str]] = set()

#: Function-level imports left in modules rewritten in parallel with issue
#: 12 (not touched by the lint change): each dodges a cycle, crosses a layer
#: upwards, or could simply be at the top. To remove, not to add to.
DEBTS: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    """Dotted names below ``corral`` ("pool", "demo.run", "__init__") of
    every source file of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if len(parts) > 1 and parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"corral.{module} is in no layer: place it in LAYERS of {__file__}")


def _target(module: str, level: int, name: str | None) -> str | None:
    """The corral module that ``from <level dots><name> import ...`` (or
    ``import corral.<name>``) names, relative to ``module``; None outside
    the package."""
    if level == 0:
        if name is None or not (name == "corral" or name.startswith("corral.")):
            return None
        return name.removeprefix("corral").lstrip(".") or "__init__"
    is_package = MODULES.get(module) is not None and MODULES[module].name == "__init__.py"
    base = [] if module == "__init__" else module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    dotted = ".".join(base + ([name] if name else []))
    return dotted or "__init__"


def _edges(module: str, node: ast.AST) -> list[tuple[str, int]]:
    """The corral modules ``node`` imports, with their line numbers."""
    out: list[tuple[str, int]] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            t = _target(module, 0, alias.name)
            if t is not None:
                out.append((t, node.lineno))
    elif isinstance(node, ast.ImportFrom):
        base = _target(module, node.level, node.module)
        if base is None:
            return out
        for alias in node.names:
            # ``from . import _core`` names a module; ``from . import Queue`` the package.
            sub = alias.name if base == "__init__" else f"{base}.{alias.name}"
            out.append((sub if sub in MODULES or sub == "_core" else base, node.lineno))
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(top-level imports, imports inside functions) of ``module``."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    top: list[tuple[str, int]] = []
    inner: list[tuple[str, int]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not in_function:
                for sub in child.orelse:
                    walk(ast.Module(body=[sub], type_ignores=[]), in_function)
                continue
            (inner if in_function else top).extend(_edges(module, child))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return top, inner


def test_every_module_of_the_package_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_no_module_imports_a_higher_layer_at_its_top_level() -> None:
    wrong = []
    for module in MODULES:
        for target, line in _imports(module)[0]:
            if _layer(target) > _layer(module) and (module, target) not in UPWARD_DEBTS:
                wrong.append(f"corral.{module} (line {line}) imports corral.{target}, a higher layer")
    assert not wrong, "\n".join(wrong)


def test_top_level_imports_have_no_cycle() -> None:
    graph = {m: {t for t, _ in _imports(m)[0] if t != m} for m in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = path[path.index(t) :] + [t] if t in path else [m, t]
                raise AssertionError("import cycle: " + " -> ".join(f"corral.{c}" for c in cycle))
            if state.get(t) is None:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_function_imports_a_corral_module_unless_lazy_by_design() -> None:
    wrong = []
    for module in MODULES:
        for target, line in _imports(module)[1]:
            top = target.split(".")[0]
            if (module, top) in LAZY or (module, top) in DEBTS:
                continue
            wrong.append(
                f"corral.{module} (line {line}) imports corral.{target} inside a function: move it to the top"
                " (if that makes a cycle, the code is in the wrong module)"
            )
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_imports_at_the_top_and_in_functions() -> None:
    # The checker itself, on a module it knows: process imports queues at
    # its top level, and _child imports process (as nothing may import _child).
    assert "queues" in {t for t, _ in _imports("process")[0]}
    assert "process" in {t for t, _ in _imports("_child")[0]}
    assert not any(t == "_child" for m in MODULES for t, _ in _imports(m)[0] + _imports(m)[1])
    assert "_soak" in {t for t, _ in _imports("__main__")[1]}
    assert "_soak" not in {t for t, _ in _imports("__main__")[0]}


def test_every_module_imports_in_a_fresh_interpreter_in_layer_order() -> None:
    order = sorted(MODULES, key=lambda m: (_layer(m), m))
    names = ["corral" if m == "__init__" else f"corral.{m}" for m in order]
    code = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_the_spawn_entry_point_starts_without_runpy_warning() -> None:
    # Parent pid 1 is not this child's parent: main returns 1 at once,
    # after the package and the module are imported.
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "corral._child", "0", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr == ""
