"""The operator's identity: namespace, name and schema, identical to torch_npu's.

:data:`SCHEMA` is the one statement of the op's arguments. Every table that depends on them
(the GE node's inputs and attr defaults, which inputs are optional, what the CLI offers) is
derived here from it, so changing an attribute default or an optional input is an edit of
:data:`SCHEMA` alone. :class:`OpArguments`, the one object the internals (checks) take, is
derived from it too: only the schema-shaped entry points (the wrapper ``ops``, the fake and
reference kernels, the GE converter) restate the signature, each turning its parameters into
one with :func:`arguments`, and ``tests/test_schema.py`` names any entry point that disagrees. The parser is deliberately torch-free (``testing.graph_text`` reads these
tables without torch); tests check it against ``torch._C.parse_schema``.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

NAMESPACE = "npu"
OP_NAME = "npu_moe_update_expert"
QUALNAME = f"{NAMESPACE}::{OP_NAME}"
GE_OP_TYPE = "MoeUpdateExpert"  # the GE IR the converter lowers the op to (docs/ge-lowering.md)

# Copied from no one: this is the contract in docs/op.md ("Prototype"), and must stay
# byte-for-byte equal to torch_npu's so that code written for Ascend runs unchanged (a test
# compares it with the installed torch-npu's own declaration).
SCHEMA = (
    "(Tensor expert_ids, Tensor eplb_table, *, Tensor? expert_scales=None, "
    "Tensor? pruning_threshold=None, Tensor? active_mask=None, int local_rank_id=-1, "
    "int world_size=-1, int balance_mode=0) -> (Tensor, Tensor)"
)


@dataclass(frozen=True)
class Argument:
    """One argument as the schema writes it. ``default`` is the Python value; absent: ``has_default`` False."""

    name: str
    type: str  # as written: "Tensor", "Tensor?", "int"
    kwarg_only: bool
    has_default: bool = False
    default: object = None

    @property
    def is_tensor(self) -> bool:
        return self.type.split("(")[0].rstrip("?") == "Tensor"  # "(a!)": an alias annotation

    @property
    def optional(self) -> bool:
        return self.type.endswith("?")


def split_top_level(text: str) -> List[str]:
    """Split on commas outside brackets: ``int[2] size=[1, 1], *`` -> [``int[2] size=[1, 1]``, ``*``]."""
    parts: List[str] = []
    current: List[str] = []
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    tail = "".join(current).strip()
    if tail:
        parts.append(tail)
    return parts


def parse_arguments(schema: str) -> Tuple[Argument, ...]:
    """The arguments of ``schema`` (``(args) -> returns``, the form torch.library.define takes)."""
    text = schema.strip()
    arguments_text, arrow, _ = text.partition(") ->")
    if not text.startswith("(") or not arrow:
        raise ValueError(f"not a schema of the form '(arguments) -> returns': {schema!r}")
    arguments, kwarg_only = [], False
    for part in split_top_level(arguments_text[1:]):
        if part == "*":
            kwarg_only = True
            continue
        declaration, has_default, default = part.partition("=")
        type_, _, name = declaration.strip().rpartition(" ")
        value = ast.literal_eval(default.strip()) if has_default else None
        arguments.append(Argument(name, type_.strip(), kwarg_only, bool(has_default), value))
    return tuple(arguments)


@dataclass(frozen=True)
class OpTables:
    """What other modules need to know about the op's arguments, derived from a schema."""

    inputs: Tuple[str, ...]  # tensor arguments, in schema order (the GE node's input order)
    optional_inputs: Tuple[str, ...]  # ``Tensor?`` ones, in schema order
    attr_defaults: Dict[str, object]  # non-tensor arguments with their defaults (GE attrs)

    @classmethod
    def from_schema(cls, schema: str) -> "OpTables":
        arguments = parse_arguments(schema)
        return cls(
            inputs=tuple(a.name for a in arguments if a.is_tensor),
            optional_inputs=tuple(a.name for a in arguments if a.is_tensor and a.optional),
            attr_defaults={a.name: a.default for a in arguments if not a.is_tensor and a.has_default},
        )


ARGUMENTS = parse_arguments(SCHEMA)
TABLES = OpTables.from_schema(SCHEMA)
INPUTS = TABLES.inputs
OPTIONAL_INPUTS = TABLES.optional_inputs
ATTR_DEFAULTS = TABLES.attr_defaults


# One call's arguments, as fields named and defaulted like the schema's (``args.world_size``).
# Not frozen: it is made on every eager call, and a frozen dataclass costs a setattr per field.
OpArguments: Any = dataclasses.make_dataclass(
    "OpArguments",
    [(a.name, object, dataclasses.field(default=a.default)) if a.has_default else (a.name, object) for a in ARGUMENTS],
    namespace={"__doc__": "The arguments of one call of the op, named as the schema names them."},
)
OpArguments.__module__ = __name__
_PICK_ARGUMENTS = operator.itemgetter(*(a.name for a in ARGUMENTS))  # in C: this runs per eager call


def arguments(values: Mapping[str, Any]) -> Any:
    """The :class:`OpArguments` of a schema-shaped entry point, from its ``locals()`` (read first
    thing; extra names such as the converter's ``meta_outputs`` are ignored)."""
    try:
        return OpArguments(*_PICK_ARGUMENTS(values))
    except KeyError as missing:
        raise TypeError(f"{OP_NAME}: an entry point lacks the schema's argument {missing}") from None
