"""The command line is derived from the use cases' request models (issue 58): every option of a
command is a field of its request, with the field's name, default and help text; commands are thin."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from backmap.cli import cli
from backmap.cli_options import RequestCommand, cli_fields, option_name

#: options that choose how a result is shown, not what is computed
PRESENTATION = {"as_json"}


def _commands(group: click.Group = cli, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


REQUEST_COMMANDS = [(name, c) for name, c in _commands() if isinstance(c, RequestCommand)]


def test_every_command_that_computes_has_a_request_model():
    plain = {name for name, c in _commands() if not isinstance(c, RequestCommand)}
    assert plain == {"plugins", "models list", "models show"}  # no options beyond a filter and --json
    assert len(REQUEST_COMMANDS) == 11


@pytest.mark.parametrize("name,command", REQUEST_COMMANDS, ids=[n for n, _ in REQUEST_COMMANDS])
def test_options_are_the_request_fields(name, command):
    ctx = click.Context(command)
    params = {p.name: p for p in command.get_params(ctx)
              if p.name not in PRESENTATION and p is not command.get_help_option(ctx)}
    fields = {n: info for n, info, _ in cli_fields(command.request_model)}
    assert set(params) == set(fields)
    for key, info in fields.items():
        param = params[key]
        if isinstance(param, click.Argument):
            assert info.json_schema_extra.get("argument")
            continue
        assert param.help == info.description, key
        assert option_name(key, info) in param.opts, key
        assert param.required == info.is_required(), key
        if not info.is_required() and not param.multiple:
            default = info.get_default(call_default_factory=True)
            assert param.default == (None if default in ([], {}) else default), key


def test_no_help_text_is_written_twice():
    """Each option's help is declared once in the code (a field's description)."""
    seen: dict[str, str] = {}
    for name, command in REQUEST_COMMANDS:
        for key, info, _ in cli_fields(command.request_model):
            owner = seen.setdefault(info.description, f"{name} --{key}")
            if owner.split(" --")[1] != key:  # the same text for two different options
                pytest.fail(f"{name} --{key} repeats the help of {owner}")
    source = Path(inspect.getsourcefile(cli.callback)).read_text()
    assert "help=" not in source.split("def command(")[1].replace('help="Print', "")  # only --json's and --kind's


def test_commands_are_thin():
    tree = ast.parse(Path(inspect.getsourcefile(cli.callback)).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any("command" in ast.unparse(d) for d in node.decorator_list):
            assert node.end_lineno - node.lineno + 1 <= 25, node.name


def test_fields_given_are_the_fields_set():
    """The model's recommended settings fill what the user left unset: a request knows which."""
    from backmap.app.apply import ApplyRequest
    from backmap.cli_options import request_from

    command = cli.commands["apply"]
    args = ["--model", "m", "--cg", "cg.gro", "--out", "o.xtc", "--candidates", "4", "--dock", "S, B",
            "--selector-param", "temperature=568", "--no-project-cg"]
    with click.Context(command) as ctx:
        command.parse_args(ctx, args)
        request = request_from(ApplyRequest, ctx)
    assert request.sampling.model_fields_set == {"candidates", "dock", "selector_params", "project_cg"}
    assert request.sampling.dock == ["S", "B"] and request.sampling.selector_params == {"temperature": 568}
    assert request.sampling.project_cg is False and request.sampling.gibbs_sweeps == 2


@pytest.mark.parametrize("args,message", [
    (["--candidates", "0"], "--candidates 0: must be a number ≥ 1"),
    (["--selector-param", "nokey"], "--selector-param: 'nokey': expected key=value"),
    (["--threads-per-worker", "0"], "--threads-per-worker 0: must be a number ≥ 1"),
])
def test_a_bad_value_names_its_option(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["apply", "--model", "sps-equivariant", "--cg", str(tmp_path / "x.gro"),
                                      "--out", str(tmp_path / "o.xtc"), *args])
    assert result.exit_code == 2
    assert f"error: {message}" in result.output


def test_moves_are_read_from_words_and_from_recipe_mappings():
    from pydantic import ValidationError

    from backmap.sampling.backmapper import BackmapSettings

    words = BackmapSettings(moves=["wrap_molecules", "jitter:sigma=0.01,mode=fast"])
    mapping = BackmapSettings(moves=[{"name": "jitter", "params": {"sigma": 0.01, "mode": "fast"}}])
    assert [m.name for m in words.moves] == ["wrap_molecules", "jitter"] and words.moves[0].params == {}
    assert words.moves[1] == mapping.moves[0]
    with pytest.raises(ValidationError, match="expected key=value"):
        BackmapSettings(moves=["jitter:sigma"])


def test_every_option_has_help_text():
    for name, command in _commands():
        for param in command.get_params(click.Context(command)):
            if isinstance(param, click.Option):
                assert param.help and param.help.strip(), f"backmap {name} {param.opts[0]} has no help text"
