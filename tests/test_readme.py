"""The README is a guide a newcomer can follow: short, with no dated measurements, and every `largestep ...` line in
it (and in docs/) a command that parses (its options exist and take the values shown), so copying one never ends in
"no such option". It quotes the layers as tests/test_engine_imports.py states them, and links only to files that
exist."""

import re
import shlex
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from largestep.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 450
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
QUICKSTART = "## Quickstart"
QUICKSTART_COMMANDS = {"profile", "recommend", "autopilot", "dashboard"}
SHELL = {"|", "||", "&&", ";", "&"}


def code_blocks(text: str, languages: tuple[str, ...] = ("bash", "sh", "console")) -> list[str]:
    """The fenced code blocks of ``text`` in one of ``languages`` ("" for a fence without one: output)."""
    return [
        body for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S) if language in languages
    ]


def command_lines(text: str) -> list[str]:
    """Every line of a shell block that runs `largestep` (a `$ ` prompt stripped)."""
    lines = []
    for block in code_blocks(text):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("largestep ") or line == "largestep":
                lines.append(line)
    return lines


def section(text: str, heading: str) -> str:
    """The text under the level-2 heading starting with ``heading``, up to the next level-2 heading."""
    start = text.index(f"\n{heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def parse(line: str) -> list[str]:
    """Parse a `largestep ...` line as the CLI would, without running it: every group and command on the path
    builds its context from the line's arguments (unknown options, bad values and missing required options
    raise click's errors). Returns the command path, e.g. ["runs", "show"]."""
    args = []
    for token in shlex.split(line, comments=True)[1:]:
        if token in SHELL or token.startswith((">", "2>")):
            break  # a redirection or the next command: the shell's, not largestep's
        args.append(token)
    command: click.Command = cli
    ctx = command.make_context("largestep", args)
    path = []
    while isinstance(command, click.Group):
        with warnings.catch_warnings():  # click 8.2 to 8.x: the subcommand's name is in protected_args (deprecated);
            warnings.simplefilter("ignore", DeprecationWarning)  # click 9: args holds every token left
            rest = [*getattr(ctx, "protected_args", []), *ctx.args]
        if not rest:
            break
        name, command, rest = command.resolve_command(ctx, rest)
        path.append(name)
        ctx = command.make_context(name, rest, parent=ctx)
    return path


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_is_short_and_neither_it_nor_the_docs_hold_a_date():
    text = readme()
    assert len(text.splitlines()) < MAX_LINES, f"README.md has {len(text.splitlines())} lines, at most {MAX_LINES - 1}"
    assert not DATE.findall(text), f"README.md holds dates: {DATE.findall(text)} (measurements go to bench/README.md)"
    for page in sorted((ROOT / "docs").glob("*.md")):
        dates = DATE.findall(page.read_text(encoding="utf-8"))
        assert not dates, f"docs/{page.name} holds dates: {dates} (a page says how it works, not when it was measured)"


def test_the_readme_starts_with_the_two_commands():
    first = code_blocks(readme(), ("bash",))[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["./dev dashboard", "./dev test"]


def test_the_quickstart_runs_the_whole_loop_from_the_command_line_and_from_python():
    quickstart = section(readme(), QUICKSTART)
    commands = {parse(line)[0] for line in command_lines(quickstart)}
    assert QUICKSTART_COMMANDS <= commands, f"the quickstart lacks {QUICKSTART_COMMANDS - commands}"
    python = "\n".join(code_blocks(quickstart, ("python",)))
    import largestep

    for name in set(re.findall(r"\blargestep\.(\w+)\(", python)):
        assert callable(getattr(largestep, name, None)), f"the quickstart calls largestep.{name}, which does not exist"
    assert {"profile", "recommend", "autopilot"} <= set(re.findall(r"\blargestep\.(\w+)\(", python))


def documented_commands() -> list:
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    return [
        pytest.param(line, id=f"{page.name}: {line}")
        for page in pages
        for line in command_lines(page.read_text(encoding="utf-8"))
    ]


@pytest.mark.parametrize("line", documented_commands())
def test_every_command_in_the_readme_and_the_docs_parses(line):
    path = parse(line)
    assert path, f"{line!r} names no command"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_a_line_with_an_option_that_does_not_exist_fails_to_parse():
    # the check above can fail: an option the command lacks, a value its type refuses, a missing required option
    for line in (
        "largestep profile --workload fraud-gru --no-such-option",
        "largestep recommend --rule cubic",
        "largestep profile --workload fraud-gru --min-steps many",
        "largestep train --lr 0.001 --batch-size 128",
        "largestep runs show",
    ):
        with pytest.raises(click.UsageError):
            parse(line)


def test_the_readme_quotes_the_layers_as_the_import_test_states_them():
    source = (ROOT / "tests" / "test_engine_imports.py").read_text(encoding="utf-8")
    layers = re.search(r"^LAYERS = \[\n.*?^\]\n", source, flags=re.M | re.S).group(0)
    assert layers in readme(), "README.md's Development section must quote LAYERS from tests/test_engine_imports.py"


def test_every_link_in_the_readme_and_the_docs_leads_to_a_file():
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_internals_documents_every_table_and_column_the_migrations_create():
    import duckdb

    from largestep.store.migrations import migrate

    con = duckdb.connect()
    migrate(con)
    parts = re.split(r"\*\*`(\w+)`\*\*", (ROOT / "docs" / "internals.md").read_text(encoding="utf-8"))
    sections = {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}
    missing = {}
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
        columns = [
            c
            for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
        ]
        text = sections.get(table, "")
        if "the columns of `noise_estimates`" in " ".join(
            text.split()
        ):  # noise_curve_points: its own, then the estimates'
            text += sections.get("noise_estimates", "")
        if absent := [c for c in columns if f"`{c}`" not in text]:
            missing[table] = absent
    assert not missing, f"docs/internals.md does not describe {missing} (engine/store/migrations.py creates them)"
