"""`make docs`: corral's API reference, built by pdoc from the docstrings into
docs/api/ (not committed: .gitignore). CI builds it, so it cannot break.

It fails (exit 1) on any warning pdoc gives (a module that does not import, a
docstring it cannot render, a link it cannot resolve) and on a public class,
function or method without a docstring: ruff's D1 checks that in the Python
sources; this checks what a user sees, the extension's classes included.
`corral.demo` is a program (`python -m corral demo`), not API: left out.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pdoc
import pdoc.doc

MODULES = ["corral", "!corral.demo"]
OUT = Path(__file__).resolve().parent / "api"


def _undocumented(module: pdoc.doc.Module) -> list[str]:
    """Public classes, functions and methods of ``module`` (its public
    submodules too) whose docstring is empty."""
    missing: list[str] = []
    stack: list[pdoc.doc.Doc] = [module]  # type: ignore[type-arg]
    while stack:
        d = stack.pop()
        if isinstance(d, pdoc.doc.Module):
            stack.extend(d.members.values())
            stack.extend(d.submodules)
        elif isinstance(d, pdoc.doc.Class):
            # Inherited members too, where corral defines them (a method of
            # an extension base class); the stdlib's are documented there.
            stack.extend(
                m for m in d.members.values() if not m.name.startswith("_") and m.taken_from[0].startswith("corral")
            )
        if isinstance(d, pdoc.doc.Class | pdoc.doc.Function) and not d.docstring.strip():
            missing.append(d.fullname)
    return sorted(set(missing))


def main() -> int:
    """Builds the reference; returns the exit status."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.render.configure(docformat="restructuredtext", search=True, show_source=False)
        pdoc.pdoc(*MODULES, output_directory=OUT)
        import corral  # imported by pdoc above

        missing = _undocumented(pdoc.doc.Module(corral))
    problems = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught]
    problems += [f"{name}: no docstring" for name in missing]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"make docs: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"make docs: {OUT / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
