"""The README is the front door: short, and every command it names exists."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from backmap.cli import cli
from conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_is_short():
    assert len(README.encode()) <= 6 * 1024


def _backmap_commands() -> list[list[str]]:
    found = set()
    for words in re.findall(r"backmap ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)", README):
        parts = words.split()
        group = cli.commands.get(parts[0])
        if group is None:
            continue
        if hasattr(group, "commands") and len(parts) > 1 and parts[1] in group.commands:
            found.add((parts[0], parts[1]))
        else:
            found.add((parts[0],))
    return sorted(found)


def test_readme_names_backmap_commands():
    named = {c[0] for c in _backmap_commands()}
    assert {"run", "apply"} <= named


@pytest.mark.parametrize("command", _backmap_commands(), ids=" ".join)
def test_every_backmap_command_in_the_readme_exists(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output


def test_every_script_recipe_and_benchmark_in_the_readme_exists():
    paths = set(re.findall(r"((?:scripts|benchmarks|recipes|tests/data|docs)/[\w./-]+\.(?:sh|py|yaml|md|gro|xtc))", README))
    assert paths, "the README names no script"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        if not link.startswith("http"):
            assert (REPO / link).exists(), link
