"""The layering of ltbench is a checked contract (issue 22; docs/architecture.md, "Layers").

``lint-imports`` (import-linter, in the dev extra) checks ``.importlinter``: the *layers* contract (a
module imports only from the layers below its own, function-local imports included, and every module
at the top of ``ltbench/`` has a layer) and the *acyclic* contract (no import circle between the
modules or packages of any package). A copy of the package with one upward import and one circle
shows that both can fail. Beside them, what import-linter does not see: ``methods/`` (installed as
``ltbench.methods`` from its own folder) uses only the Method API, the core never imports a method,
and the size rules of the layout.
"""
from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 600  # per module of ltbench/ and methods/
MAX_TOP_MODULES = 14  # files at the top of ltbench/, __init__.py included
# What a method may import (docs/adding-a-method.md): the public API, and the preset registry and
# samplers of the data layer (a method may register its own augmentation view).
METHOD_API = ("ltbench", "ltbench.errors", "ltbench.method", "ltbench.registry", "ltbench.models", "ltbench.losses",
              "ltbench.stages", "ltbench.schedules", "ltbench.recipes", "ltbench.data.augment", "ltbench.data.samplers")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS}: import-linter is not installed; pip install -e '.[dev]'")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=600)


def test_the_tree_keeps_the_layering_contract() -> None:
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_the_contract_breaks_on_an_upward_import_and_on_a_circle(tmp_path: Path) -> None:
    shutil.copytree(REPO / "ltbench", tmp_path / "ltbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    # The lowest layer reaching the command line, inside a function: still an import.
    with open(tmp_path / "ltbench" / "errors.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _upward():\n    from ltbench.cli import main  # noqa: F401\n")
    # report.write imports report.groups; groups importing write back closes a circle.
    with open(tmp_path / "ltbench" / "report" / "groups.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _circle():\n    from ltbench.report.write import write_report  # noqa: F401\n")
    proc = lint_imports(tmp_path)  # the copy: lint-imports puts its working folder first on sys.path
    assert proc.returncode != 0
    assert "Contracts: 0 kept, 2 broken." in proc.stdout, proc.stdout
    assert "ltbench.errors is not allowed to import ltbench.cli" in proc.stdout
    assert "No cycles are allowed in ltbench.report" in proc.stdout


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ltbench import of a file, at any depth (function-local ones too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ltbench"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "ltbench":
            out.append((node.lineno, node.module))
    return out


def test_methods_use_only_the_method_api() -> None:
    wrong = [f"methods/{path.name}:{line}: {module}"
             for path in sorted((REPO / "methods").glob("*.py"))
             for line, module in imported_modules(path)
             if module not in METHOD_API and not module.startswith("ltbench.methods")]
    assert not wrong, "imports outside the Method API (docs/adding-a-method.md):\n" + "\n".join(wrong)


def test_the_core_never_imports_a_method() -> None:
    wrong = [f"{path.relative_to(REPO)}:{line}: {module}"
             for path in sorted((REPO / "ltbench").rglob("*.py"))
             for line, module in imported_modules(path) if module.startswith("ltbench.methods")]
    assert not wrong, "the registry loads methods by name; nothing in ltbench/ imports one:\n" + "\n".join(wrong)


def test_no_module_over_600_lines() -> None:
    files = [*(REPO / "ltbench").rglob("*.py"), *(REPO / "methods").rglob("*.py")]
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by job (at most {MAX_LINES} lines): {long}"


def test_at_most_14_modules_at_the_top_of_ltbench() -> None:
    top = sorted(p.name for p in (REPO / "ltbench").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules at the top of ltbench/ (at most {MAX_TOP_MODULES}): " \
                                        f"{', '.join(top)}; group them by job into a package"


def test_setup_cfg_installs_every_package() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    listed = set(parser["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ltbench").rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from setup.cfg [options] packages: {sorted(found - listed)}"
