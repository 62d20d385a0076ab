"""Every environment variable the package reads, in one table, with the one parser for each kind.

A switch means what it says: ``1/0``, ``true/false``, ``yes/no``, ``on/off`` in any case, and an
empty value is the same as unset. Any other value is an error naming the variable, the value and
the words accepted, never a silent "on" (``UPDATE_GOLDENS=false`` once turned golden rewriting
on). Choice variables are read the same way. This module imports nothing heavy: it runs before
``import torch``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Mapping, Optional, Tuple

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class VariableError(ValueError):
    """An environment variable holds a value the package does not accept. One line."""


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable: ``kind`` is "switch", "choice" or "path"."""

    name: str
    kind: str
    meaning: str
    choices: Tuple[str, ...] = ()

    def accepted(self) -> str:
        """The accepted values in words, for messages and the docs."""
        if self.kind == "switch":
            return f"one of {', '.join(TRUE_WORDS)} (on) or {', '.join(FALSE_WORDS)} (off), any case"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices) + " (or unset)"
        return "a directory path"


VARIABLES: Dict[str, Variable] = {
    variable.name: variable
    for variable in (
        Variable(
            "TORCHAIR_PLUGIN_NATIVE_FAKE",
            "switch",
            "keep torch_npu's own fake (meta) kernel instead of installing the validating one",
        ),
        Variable(
            "TORCHAIR_PLUGIN_NATIVE_CONVERTER",
            "switch",
            "keep torchair's own GE converter instead of installing the plugin's",
        ),
        Variable(
            "TORCHAIR_PLUGIN_UPDATE_GOLDENS",
            "switch",
            "rewrite differing golden graph files instead of failing (pytest plugin)",
        ),
        Variable(
            "TORCHAIR_PLUGIN_CAPTURE_STRICT",
            "switch",
            "fail, instead of skip, a capture test where CANN-less capture cannot run (pytest plugin)",
        ),
        Variable(
            "TORCHAIR_PLUGIN_TORCH_NPU",
            "choice",
            "which torch_npu GE capture runs on: the real one over CANN stubs, or stand-ins",
            choices=("real", "stand-in"),
        ),
        Variable(
            "TORCHAIR_PLUGIN_CACHE_DIR",
            "path",
            "where the generated CANN stub libraries are cached (default ~/.cache/torchair-plugin)",
        ),
    )
}


def _raw(name: str, environ: Mapping[str, str]) -> str:
    if name not in VARIABLES:
        raise KeyError(f"{name} is not one of the package's variables: {', '.join(VARIABLES)}")
    return environ.get(name, "").strip()


def _refuse(name: str, value: str) -> VariableError:
    return VariableError(f"{name}={value!r} is not accepted: use {VARIABLES[name].accepted()}")


def read_switch(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """The switch ``name``: False when unset or empty; VariableError for a word it does not know."""
    value = _raw(name, environ)
    if value.lower() in TRUE_WORDS:
        return True
    if value == "" or value.lower() in FALSE_WORDS:
        return False
    raise _refuse(name, value)


def read_choice(name: str, environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The choice ``name`` (as listed, matched in any case), None when unset or empty."""
    value = _raw(name, environ)
    if value == "":
        return None
    for choice in VARIABLES[name].choices:
        if value.lower() == choice:
            return choice
    raise _refuse(name, value)


def check_all(environ: Mapping[str, str] = os.environ) -> None:
    """VariableError for the first variable set to a value it does not accept (pytest calls this
    at configure time, so a typo is a usage error before any test runs)."""
    for variable in VARIABLES.values():
        if variable.kind == "switch":
            read_switch(variable.name, environ)
        elif variable.kind == "choice":
            read_choice(variable.name, environ)
