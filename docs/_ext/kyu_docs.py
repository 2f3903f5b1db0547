"""Directives that generate kyu-trio's reference pages from the code itself.

- ``kyu-api MODULE``: every name of ``MODULE.__all__``, documented by autodoc from its
  docstring (classes, then functions, then exceptions), so a new public name shows up
  without anyone editing the docs, and a public name without a docstring is a warning
  (an error under ``-W``).
- ``kyu-config``: the table of every `kyu_trio.Config` field: type and default from
  ``attrs.fields(Config)``, the environment variable and meaning from
  ``docs/reference/config-fields.toml``. A field missing there, or an entry for a field
  that does not exist, is a warning.
- ``kyu-schema``: the SQL migration files shipped in the package, wherever they live in
  it, in the order they are applied.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import tomllib
from pathlib import Path
from typing import Any

import attrs
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging as sphinx_logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

log = sphinx_logging.getLogger(__name__)

CONFIG_FIELDS = Path(__file__).resolve().parents[1] / "reference" / "config-fields.toml"


def public_names(module_name: str) -> list[tuple[str, str, Any]]:
    """``(kind, name, object)`` for every public name of a module, in the order the
    reference shows them: kind is ``class``, ``function``, ``exception`` or ``data``."""
    module = importlib.import_module(module_name)
    order = {"class": 0, "function": 1, "exception": 2, "data": 3}
    found = []
    for name in getattr(module, "__all__", []):
        if name.startswith("__"):
            continue
        obj = getattr(module, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            kind = "exception"
        elif inspect.isclass(obj):
            kind = "class"
        elif inspect.isroutine(obj):
            kind = "function"
        else:
            kind = "data"
        found.append((kind, name, obj))
    return sorted(found, key=lambda item: (order[item[0]], item[1].lower()))


def documented_assignment(module_name: str, name: str) -> tuple[str, list[str]] | None:
    """``(value, comment lines)`` of ``name = value`` preceded by ``#:`` comments in the
    package's source, for names (type aliases, constants) that carry no docstring of
    their own; None when there is no such documented assignment."""
    package = Path(importlib.import_module(module_name.split(".")[0]).__file__ or "").parent
    for path in sorted(package.rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith(f"{name} = ") and not line.startswith(f"{name}: "):
                continue
            comment = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#:"):
                comment.insert(0, lines[j][2:].strip())
                j -= 1
            if comment:
                return line.split("=", 1)[1].strip(), comment
    return None


def parse_rst(directive: SphinxDirective, lines: list[str]) -> list[nodes.Node]:
    """Parse generated reStructuredText (autodoc's directives, a list-table) from a MyST
    page: wrapped in MyST's ``eval-rst`` fence, which parses its body as RST, while a
    plain nested parse from a MyST page would read it as Markdown."""
    fence = ["```{eval-rst}", *lines, "```"]
    container = nodes.section()
    container.document = directive.state.document
    nested_parse_with_titles(
        directive.state, StringList(fence, source=directive.get_source_info()[0]), container
    )
    return list(container.children)


class ApiDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        titles = {
            "class": "Classes",
            "function": "Functions",
            "exception": "Errors",
            "data": "Data",
        }
        lines: list[str] = []
        shown = None
        for kind, name, obj in public_names(module_name):
            if kind != shown:
                lines += [f".. rubric:: {titles[kind]}", ""]
                shown = kind
            if kind == "data":
                found = documented_assignment(module_name, name)
                if found is None:
                    log.warning(
                        "public name %s.%s has no #: comment where it is assigned",
                        module_name,
                        name,
                        location=self.get_location(),
                    )
                    continue
                value, comment = found
                lines += [f".. py:data:: {module_name}.{name}", f"   :value: {value}", ""]
                lines += [f"   {text}" for text in comment] + [""]
                continue
            if not (inspect.getdoc(obj) or "").strip():
                log.warning(
                    "public name %s.%s has no docstring",
                    module_name,
                    name,
                    location=self.get_location(),
                )
            directive = {
                "class": "autoclass",
                "function": "autofunction",
                "exception": "autoexception",
                "data": "autodata",
            }[kind]
            lines.append(f".. {directive}:: {module_name}.{name}")
            if kind in ("class", "exception"):
                lines.append("   :members:")
                if kind == "exception":
                    lines.append("   :show-inheritance:")
            lines.append("")
        return parse_rst(self, lines)


def _default_text(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return "(computed)"
    if isinstance(default, logging.Logger):
        return f'``logging.getLogger("{default.name}")``'
    return f"``{default!r}``"


def config_rows() -> tuple[list[tuple[str, str, str, str, str]], list[str]]:
    """The table rows, and the problems (fields without an entry and the reverse)."""
    from kyu_trio import Config

    described: dict[str, dict[str, str]] = tomllib.loads(CONFIG_FIELDS.read_text())
    fields = attrs.fields(Config)
    names = [field.name for field in fields]
    problems = [
        f"Config.{name} has no entry in {CONFIG_FIELDS.name}"
        for name in names
        if name not in described
    ]
    problems += [
        f"{CONFIG_FIELDS.name} describes {name}, which is not a Config field"
        for name in described
        if name not in names
    ]
    rows = []
    for field in fields:
        entry = described.get(field.name, {})
        env = entry.get("env", "")
        rows.append(
            (
                f"``{field.name}``",
                f"``{field.type if isinstance(field.type, str) else field.type.__name__}``",
                _default_text(field),
                f"``{env}``" if env else "",
                entry.get("meaning", ""),
            )
        )
    return rows, problems


class ConfigDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(str(CONFIG_FIELDS))
        rows, problems = config_rows()
        for problem in problems:
            log.warning(problem, location=self.get_location())
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 18 10 16 14 42",
            "",
            "   * - Field",
            "     - Type",
            "     - Default",
            "     - Environment",
            "     - Meaning",
        ]
        for row in rows:
            lines.append(f"   * - {row[0]}")
            lines += [f"     - {cell}" for cell in row[1:]]
        return parse_rst(self, lines)


def schema_files() -> list[Path]:
    """The migrations shipped in the package (``NNN_name.sql``), in the order applied."""
    package = Path(importlib.import_module("kyu_trio").__file__ or "").parent
    return sorted(package.glob("**/sql/[0-9]*.sql"), key=lambda path: path.name)


class SchemaDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        files = schema_files()
        if not files:
            log.warning(
                "no SQL migration files found in the kyu_trio package", location=self.get_location()
            )
        package = Path(importlib.import_module("kyu_trio").__file__ or "").parent.parent
        result: list[nodes.Node] = []
        for path in files:
            self.env.note_dependency(str(path))
            text = path.read_text()
            title = nodes.rubric(text=str(path.relative_to(package)))
            # PostgreSQL's own dialect: the plain SQL lexer stops at a $$ function body.
            block = nodes.literal_block(text, text, language="postgresql")
            result += [title, block]
        return result


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("kyu-api", ApiDirective)
    app.add_directive("kyu-config", ConfigDirective)
    app.add_directive("kyu-schema", SchemaDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
