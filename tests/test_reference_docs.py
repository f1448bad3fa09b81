"""The generated Reference pages (docs/conf.py builds them): every recipe key and every installed
plugin's parameters appear, each recipe key says what it is, and tables stay tables."""
from backmap.app.reference import field_rows, recipe_keys_markdown, reference_pages, type_name
from backmap.engine.recipe import Recipe
from backmap.engine.registry import default_registry


def test_every_recipe_key_is_listed_with_a_meaning():
    text = recipe_keys_markdown()
    rows = field_rows(Recipe)
    assert {"name", "system.topology", "data.split.mode", "training_systems[].system.mapping", "steps"} <= \
        {key for key, *_ in rows}
    for key, _type, _default, meaning in rows:
        assert f"| `{key}` |" in text
        assert meaning.strip(), f"recipe key {key} has no description"


def test_every_plugin_and_parameter_is_listed_on_pages_under_40_kb():
    registry = default_registry()
    pages = reference_pages(registry)
    assert max(len(p.encode()) for p in pages.values()) <= 40 * 1024
    text = "\n".join(pages.values())
    for info in registry:
        assert f"### `{info.name}` ({info.kind})" in text
        for key, *_ in field_rows(info.cls.Params):
            assert f"| `{key}` |" in text, (info.name, key)


def test_type_names_are_short_and_a_pipe_does_not_break_the_table():
    from typing import Literal, Optional
    assert type_name(Optional[int]) == "int | None"
    assert type_name(Literal["a", "b"]) == "'a' | 'b'"
    assert type_name(list[str]) == "list[str]"
    line = next(l for l in recipe_keys_markdown().splitlines() if l.startswith("| `workdir` |"))
    assert line.count(" | ") == 3  # four cells: the union's pipe is escaped
