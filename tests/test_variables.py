"""The package's environment variables: one table, one parser per kind, a clear error for a typo."""

import pytest

from torchair_plugin.variables import (
    FALSE_WORDS,
    TRUE_WORDS,
    VARIABLES,
    VariableError,
    check_all,
    read_choice,
    read_switch,
)

SWITCHES = [v.name for v in VARIABLES.values() if v.kind == "switch"]
CHOICES = [v.name for v in VARIABLES.values() if v.kind == "choice"]


@pytest.mark.parametrize("name", SWITCHES)
def test_a_switch_reads_every_documented_word_in_any_case(name):
    for word in TRUE_WORDS:
        for spelling in (word, word.upper(), word.capitalize(), f" {word} "):
            assert read_switch(name, {name: spelling}) is True, spelling
    for word in FALSE_WORDS:
        for spelling in (word, word.upper(), word.capitalize()):
            assert read_switch(name, {name: spelling}) is False, spelling
    assert read_switch(name, {}) is False and read_switch(name, {name: ""}) is False


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize("value", ["2", "enabled", "tru", "-1", "off please"])
def test_any_other_switch_value_is_one_line_naming_the_variable_value_and_words(name, value):
    with pytest.raises(VariableError) as error:
        read_switch(name, {name: value})
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert f"{name}={value!r}" in message and "true" in message and "off" in message


@pytest.mark.parametrize("name", CHOICES)
def test_a_choice_is_one_of_its_words_or_unset(name):
    for choice in VARIABLES[name].choices:
        assert read_choice(name, {name: choice.upper()}) == choice
    assert read_choice(name, {name: " "}) is None and read_choice(name, {}) is None
    with pytest.raises(VariableError, match=rf"{name}='stand_in' is not accepted: use one of real, stand-in"):
        read_choice(name, {name: "stand_in"})


def test_check_all_names_the_first_bad_variable_and_passes_a_clean_environment():
    check_all({})
    check_all({name: "yes" for name in SWITCHES})
    with pytest.raises(VariableError, match="TORCHAIR_PLUGIN_UPDATE_GOLDENS='maybe'"):
        check_all({"TORCHAIR_PLUGIN_UPDATE_GOLDENS": "maybe"})


def test_an_unknown_name_is_a_programming_error_not_a_silent_false():
    with pytest.raises(KeyError, match="not one of the package's variables"):
        read_switch("TORCHAIR_PLUGIN_NO_SUCH_THING", {})


def test_the_docs_list_every_variable_with_its_kind_and_meaning():
    import pathlib

    docs = (pathlib.Path(__file__).parent.parent / "docs" / "graph-mode.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(" `"): line for line in docs.splitlines() if line.startswith("| `TORCHAIR_PLUGIN_")
    }
    assert set(rows) == set(VARIABLES)
    for name, variable in VARIABLES.items():
        assert variable.kind in rows[name] and variable.meaning in rows[name], name
        assert all(f"`{choice}`" in rows[name] for choice in variable.choices), name
