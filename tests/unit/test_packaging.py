"""What a package index shows, and what installing kyu-trio pulls in: pyproject.toml's
metadata, the optional extras, LICENSE and CHANGELOG.md. No servers."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import kyu_trio

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]

# Import name -> the extra that installs it. Neither may be needed by `import kyu_trio`.
OPTIONAL_IMPORTS = {"rich": "cli", "trio_asyncio": "asyncio"}


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines]
    return {req.name: req for req in reqs}


def test_license_file_is_mit_and_shipped() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 The kyu-trio authors" in text
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]


def test_classifiers_say_trio_typed_and_each_supported_python() -> None:
    classifiers = PROJECT["classifiers"]
    assert "Framework :: Trio" in classifiers
    assert "Typing :: Typed" in classifiers
    assert (ROOT / "kyu_trio" / "py.typed").exists()  # what Typing :: Typed promises
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    # setuptools refuses License :: classifiers next to a PEP 639 license expression.
    assert not [c for c in classifiers if c.startswith("License :: ")]
    versions = sorted(
        (
            c.rsplit(" ", 1)[1]
            for c in classifiers
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
        ),
        key=lambda v: int(v.split(".")[1]),
    )
    assert versions == ["3.11", "3.12", "3.13", "3.14"]
    supported = SpecifierSet(PROJECT["requires-python"])
    assert all(v in supported for v in versions)
    assert "3.10" not in supported


def test_authors_keywords_and_urls() -> None:
    assert PROJECT["authors"] == [{"name": "The kyu-trio authors"}]
    assert {"trio", "postgresql", "redis"} <= set(PROJECT["keywords"])
    urls = PROJECT["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())
    repo = urls["Repository"]
    assert urls["Issues"] == f"{repo}/issues"
    assert urls["Changelog"].startswith(f"{repo}/") and urls["Changelog"].endswith("CHANGELOG.md")


def test_library_depends_on_psycopg_without_binary_nor_optional_packages() -> None:
    deps = _requirements(PROJECT["dependencies"])
    assert "psycopg" in deps
    assert deps["psycopg"].extras == set()
    assert "rich" not in deps
    assert "trio-asyncio" not in deps


def test_extras_install_binary_psycopg_rich_and_trio_asyncio() -> None:
    binary = _requirements(EXTRAS["binary"])
    assert binary["psycopg"].extras == {"binary"}
    assert "rich" in _requirements(EXTRAS["cli"])
    assert "trio-asyncio" in _requirements(EXTRAS["asyncio"])


def test_dev_extra_includes_the_quick_start_path() -> None:
    # scripts/setup.sh installs '.[dev]': it must bring psycopg's libpq and every optional
    # feature, so that a fresh machine runs the whole suite.
    self_extras: set[str] = set()
    for req in map(Requirement, EXTRAS["dev"]):
        if req.name == PROJECT["name"]:
            self_extras |= req.extras
    assert {"binary", "cli", "asyncio"} <= self_extras
    assert self_extras <= set(EXTRAS)


def _module_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Top-level package names imported when the module is imported: in its body and in
    its top-level if/try blocks, but not under ``if TYPE_CHECKING:`` nor in functions."""
    found: list[tuple[str, int]] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module.split(".")[0], node.lineno))
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody):
                    walk(part)
                for handler in node.handlers:
                    walk(handler.body)
            elif isinstance(node, ast.With):
                walk(node.body)

    walk(tree.body)
    return found


def test_optional_packages_are_imported_only_where_used() -> None:
    offenders = []
    for path in sorted((ROOT / "kyu_trio").rglob("*.py")):
        for name, line in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if name in OPTIONAL_IMPORTS:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert offenders == []


_BLOCK_OPTIONAL = """
import sys
from importlib.abc import MetaPathFinder

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
import kyu_trio
from {module} import {attr} as main
main(["--help"])
"""


def test_library_and_cli_work_without_the_optional_extras() -> None:
    # A subprocess, so that the block applies from the first import on.
    module, attr = PROJECT["scripts"]["kyu-trio"].split(":")
    code = _BLOCK_OPTIONAL.format(blocked=set(OPTIONAL_IMPORTS), module=module, attr=attr)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: kyu-trio" in done.stdout


CHANGELOG_HEADER = """\
# Changelog

All notable changes to this project will be documented in this file.

The format is based on [Keep a Changelog](https://keepachangelog.com/en/1.1.0/),
and this project adheres to [Semantic Versioning](https://semver.org/spec/v2.0.0.html).
"""


def test_changelog_keeps_a_changelog_with_a_section_per_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith(CHANGELOG_HEADER)
    sections = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    names = [name for name, _ in sections]
    assert names[0] == "Unreleased"
    assert "0.1.0" in names
    assert kyu_trio.__version__ in names
    for name, date in sections:
        assert (name == "Unreleased") == (date == ""), f"{name}: released versions have a date"
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.M), (
            f"no link for [{name}] at the end"
        )
    # Newest first.
    released = [tuple(int(p) for p in name.split(".")) for name in names[1:]]
    assert released == sorted(released, reverse=True)


@pytest.mark.parametrize("section", ["fast", "full", "docs", "bench", "style"])
def test_contributing_says_how_to_run_each_check(section: str) -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    expected = {
        "fast": 'pytest -m "not integration"',
        "full": "./scripts/test.sh",
        "docs": "sphinx-build -W -b html docs docs/_build/html",
        "bench": "./scripts/bench.sh",
        "style": "ruff format",
    }[section]
    assert expected in text


_MISSING_EXTRA = """
import sys
from importlib.abc import MetaPathFinder

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
import kyu_trio
from kyu_trio._errors import require_extra

async def fetch(payload):
    pass

for call in (
    lambda: kyu_trio.Queue().register("fetch", fetch, asyncio=True),
    lambda: require_extra("rich", extra="cli", feature="kyu-trio stats --watch"),
):
    try:
        call()
    except kyu_trio.MissingExtraError as exc:
        print(exc)
"""


def test_a_missing_extra_is_a_clear_error_naming_it() -> None:
    code = _MISSING_EXTRA.format(blocked=set(OPTIONAL_IMPORTS))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "a handler with asyncio=True needs the 'trio_asyncio' package, which is not "
        "installed: pip install 'kyu-trio[asyncio]'",
        "kyu-trio stats --watch needs the 'rich' package, which is not installed: "
        "pip install 'kyu-trio[cli]'",
    ]
