"""The documentation stays true to the code: no server needed, well under a second.

The docs build itself (``sphinx-build -W`` in scripts/test.sh) catches broken links,
missing include files and markers, and public names without a docstring. These tests
catch what a build cannot: Python written inline instead of included from an example
that a test runs, a README example that drifted from its file, a ``kyu-trio`` command
line that no longer parses, a guarantee citing a test that is gone, and the generated
Config table's hand-written half (meanings, environment variables) out of step with the
class.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import click
import pytest

from kyu_trio import Config, Queue

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
PYTHON = {"python", "py", "python3", "pycon", "ipython", "ipython3"}
#: Blocks whose ``kyu-trio`` lines are commands (``ini``: a systemd unit's ExecStart).
SHELL = {"", "console", "shell", "sh", "bash", "text", "ini"}

sys.path.insert(0, str(DOCS / "_ext"))
import kyu_docs  # noqa: E402


def pages() -> list[Path]:
    return [README, *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]


def fences(path: Path) -> Iterator[tuple[int, str, str]]:
    """``(line, info, body)`` of every fenced block (``` or ~~~) of a Markdown file."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        marker, info, start = opening.group(2), opening.group(3).strip(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(marker):
            body.append(lines[i])
            i += 1
        yield start + 1, info, "\n".join(body)
        i += 1


def regions(path: Path) -> dict[str, str]:
    """The ``# [name]`` ... ``# [/name]`` regions of an example file."""
    text = path.read_text()
    return {
        name: body
        for name, body in re.findall(r"^# \[([\w-]+)\]\n(.*?)^# \[/\1\]$", text, re.M | re.S)
    }


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first = next(fences(README))
    commands = [line.split("#")[0].strip() for line in first[2].splitlines()]
    assert commands == ["./scripts/quickstart.sh", "./scripts/test.sh"]
    # Before any other section: the set-up commands come first.
    assert text.index("./scripts/quickstart.sh") < text.index("## Example")


def test_readme_python_is_an_example_file_region() -> None:
    """GitHub cannot include files, so the README's Python must be the same text as a
    marked region of an example that a test runs."""
    blocks = [
        body for _, info, body in fences(README) if info.split()[:1] and info.split()[0] in PYTHON
    ]
    assert blocks, "the README shows a Python example"
    available = {
        body.rstrip("\n"): f"{path.name}:{name}"
        for path in EXAMPLES.glob("*.py")
        for name, body in regions(path).items()
    }
    for block in blocks:
        assert block.rstrip("\n") in available, (
            "a README Python block differs from every marked region of examples/*.py; "
            "copy it from (or to) examples/hello.py between '# [hello]' and '# [/hello]'"
        )


def test_docs_have_no_inline_python() -> None:
    """Python in the docs is included from examples/ (which tests run), never written
    inline where nothing runs it."""
    inline = []
    for path in pages()[1:]:
        for line, info, body in fences(path):
            words = info.replace("{", " ").replace("}", " ").split()
            if (words[:1] and words[0] in PYTHON) or (
                words[:1] in (["code-block"], ["code"], ["sourcecode"])
                and words[1:2]
                and words[1] in PYTHON
            ):
                inline.append(f"{path.relative_to(ROOT)}:{line}")
            if words[:1] == ["eval-rst"] and re.search(r"code-block::\s*py", body):
                inline.append(f"{path.relative_to(ROOT)}:{line}")
    assert not inline, f"inline Python (use a literalinclude from examples/): {inline}"


def literalincludes() -> Iterator[tuple[Path, int, Path, dict[str, str]]]:
    for path in pages()[1:]:
        for line, info, body in fences(path):
            if not info.startswith("{literalinclude}"):
                continue
            target = (path.parent / info.split(None, 1)[1].strip()).resolve()
            options = dict(re.findall(r"^:([\w-]+):\s*(.*)$", body, re.M))
            yield path, line, target, {k: v.strip().strip('"') for k, v in options.items()}


def test_included_python_comes_from_examples_that_a_test_runs() -> None:
    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    found = list(literalincludes())
    assert found
    for page, line, target, options in found:
        where = f"{page.relative_to(ROOT)}:{line}"
        assert EXAMPLES in target.parents and target.suffix == ".py", where
        assert target.exists(), where
        text = target.read_text()
        for key in ("start-after", "end-before"):
            if key in options:
                assert options[key] in text, (where, options[key])
        if "pyobject" in options:
            assert re.search(rf"^(async )?def {options['pyobject']}\b", text, re.M), where
        # A test runs it: its name appears in a test module next to an EXAMPLES path.
        assert f'"{target.name}"' in tests_text, f"{where}: no test runs examples/{target.name}"


def kyu_trio_calls(line: str) -> Iterator[list[str]]:
    """The argv (after the program) of every ``kyu-trio`` call in a shell line, also
    inside ``$(...)``, after ``&&`` or in a quoted ``sh -c '...'``."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    for i, token in enumerate(tokens):
        if " " in token and "kyu-trio" in token:
            yield from kyu_trio_calls(token)
        program = token.endswith("kyu-trio") or (
            token == "kyu_trio" and i > 0 and tokens[i - 1] == "-m"
        )
        if not program:
            continue
        args = []
        for arg in tokens[i + 1 :]:
            if arg in ("--", ")", "&&", "||", "|", ";") or arg.startswith((">", "<")):
                break
            args.append(arg)
        yield args


def command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every ``kyu-trio ...`` call shown in a shell block of the README and the docs."""
    for path in pages():
        for line, info, body in fences(path):
            if info not in SHELL:
                continue
            for text in body.splitlines():
                command = text.strip()
                if info == "ini" and not command.startswith("ExecStart="):
                    continue
                if command.startswith("$ "):
                    command = command[2:]
                elif not re.match(r"[\w./=-]*(kyu-trio|python -m kyu_trio)\s", command):
                    continue  # output, not a command
                for args in kyu_trio_calls(command):
                    yield f"{path.relative_to(ROOT)}:{line}: {text.strip()}", args


def test_every_command_line_shown_parses() -> None:
    from kyu_trio._cli import cli

    shown = list(command_lines())
    assert len(shown) > 20
    for where, args in shown:
        with click.Context(cli, info_name="kyu-trio") as ctx:
            cli.parse_args(ctx, list(args))
            # The group keeps the command's name apart from the arguments that follow it.
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                continue
            try:
                name, command, sub_args = cli.resolve_command(ctx, rest)
                assert command is not None and name is not None, where
                command.make_context(name, sub_args, parent=ctx)
            except click.UsageError as exc:
                pytest.fail(f"{where}: {exc.format_message()}")


SAMPLES = {
    "dsn": "postgresql://app@db.example:5432/app",
    "redis_url": "redis://cache.example:6379/2",
    "queue_name": "kyu:docs",
    "metrics_host": "0.0.0.0",
}


def test_config_table_describes_every_field_and_its_environment_variable() -> None:
    rows, problems = kyu_docs.config_rows()
    assert problems == []
    assert len(rows) == len(attrs.fields(Config))
    import tomllib

    described = tomllib.loads(kyu_docs.CONFIG_FIELDS.read_text())
    for field in attrs.fields(Config):
        env = described[field.name].get("env")
        if env is None:
            continue
        value = SAMPLES.get(field.name, 7)
        config = Config.from_env({env: str(value)})
        assert getattr(config, field.name) == value, (field.name, env)
        assert getattr(Config.from_env({}), field.name) == field.default


def test_every_test_a_guarantee_cites_exists() -> None:
    text = (DOCS / "explanation" / "guarantees.md").read_text()
    defined = set()
    for path in (ROOT / "tests").rglob("*.py"):
        defined |= set(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.M))
    cited = set(re.findall(r"\b(test_\w+)\b", text)) - {
        name for name in re.findall(r"\b(test_\w+)\.py\b", text)
    }
    assert cited
    assert sorted(cited - defined) == []
    for path in re.findall(r"\b((?:tests|bench)/[\w/]+\.(?:py|md))\b", text):
        assert (ROOT / path).exists(), path


def test_metrics_table_lists_what_a_queue_exports() -> None:
    from prometheus_client import generate_latest

    table = (DOCS / "reference" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(kyu_\w+)`", table, re.M))
    exported = set()
    text = generate_latest(Queue(Config(metrics_port=0)).metrics.registry).decode()
    for name, kind in re.findall(r"^# TYPE (kyu_\w+) (\w+)$", text, re.M):
        exported.add(f"{name}_total" if kind == "counter" and not name.endswith("_total") else name)
    supervisor = {"kyu_process_up", "kyu_process_restarts_total"}
    assert sorted(exported - documented) == []
    assert sorted(documented - exported - supervisor) == []
