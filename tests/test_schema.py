"""torchair_plugin.schema: the op's one schema, the tables derived from it, and torch-npu's own copy."""

import ast
import glob
import inspect
import os
import re

import pytest
import torch

from torchair_plugin import environment, limits, ops, schema
from torchair_plugin.fake import npu_moe_update_expert_fake
from torchair_plugin.reference import npu_moe_update_expert_reference
from torchair_plugin.testing import graph_text
from torchair_plugin.testing import lowering as lower
from torchair_plugin.testing.pytest_plugin import require_ge_capture

# Every construct the parser must read like torch does: list, float, bool and string defaults,
# alias annotations, optional tensors after the keyword-only marker.
RICH_SCHEMA = (
    '(Tensor(a) self, int[2] size=[1, 1], float eps=1e-05, bool flag=True, str mode="x y", *, '
    "Tensor? out=None, int n=-3) -> Tensor(a)"
)


def _torch_view(argument) -> tuple:
    optional = argument.type.kind() == "OptionalType"
    base = argument.type.getElementType() if optional else argument.type
    default = argument.default_value if argument.has_default_value() else None
    return (
        argument.name,
        base.kind() == "TensorType",
        optional,
        argument.kwarg_only,
        argument.has_default_value(),
        default,
    )


def _our_view(argument: schema.Argument) -> tuple:
    return (
        argument.name,
        argument.is_tensor,
        argument.optional,
        argument.kwarg_only,
        argument.has_default,
        argument.default,
    )


@pytest.mark.parametrize("text", [schema.SCHEMA, RICH_SCHEMA], ids=["op", "rich"])
def test_torch_free_parser_reads_schemas_as_torch_does(text):
    parsed = torch._C.parse_schema("ns::op" + text)
    assert [_our_view(a) for a in schema.parse_arguments(text)] == [_torch_view(a) for a in parsed.arguments]


def test_parser_rejects_what_is_not_a_schema():
    with pytest.raises(ValueError, match="not a schema"):
        schema.parse_arguments("Tensor x -> Tensor")


def test_derived_tables_follow_a_changed_schema():
    # The two edits the tables must follow: an attribute default, and an input made optional
    # (plus one added), with nothing else edited.
    changed = schema.SCHEMA.replace("int world_size=-1", "int world_size=8").replace(
        "Tensor eplb_table, *,", "*, Tensor? eplb_table=None, Tensor? extra=None,"
    )
    tables = schema.OpTables.from_schema(changed)
    assert tables.attr_defaults == {"local_rank_id": -1, "world_size": 8, "balance_mode": 0}
    assert tables.optional_inputs == ("eplb_table", "extra", "expert_scales", "pruning_threshold", "active_mask")
    assert tables.inputs == ("expert_ids",) + tables.optional_inputs
    ir = graph_text.OpIR.from_schema(changed)
    assert ir.inputs == tables.inputs
    assert ir.optional_inputs == frozenset(tables.optional_inputs)
    assert ir.attr_defaults == tables.attr_defaults


def test_the_ops_tables_are_the_schemas():
    assert schema.INPUTS == ("expert_ids", "eplb_table", "expert_scales", "pruning_threshold", "active_mask")
    assert schema.OPTIONAL_INPUTS == ("expert_scales", "pruning_threshold", "active_mask")
    assert schema.ATTR_DEFAULTS == {"local_rank_id": -1, "world_size": -1, "balance_mode": 0}
    assert graph_text.OP_IRS[schema.GE_OP_TYPE] == graph_text.OpIR.from_schema(schema.SCHEMA)
    assert lower.OPTIONAL_INPUTS is schema.OPTIONAL_INPUTS
    assert list(limits.INPUT_DTYPES) == list(schema.INPUTS)
    assert lower.IDS_DTYPES == ("int32", "int64")
    assert lower.SCALES_DTYPES == ("float16", "bfloat16", "float32")


# --- the schema-shaped entry points: the only places besides SCHEMA that spell the signature ------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERTER_FILE = os.path.join(REPO, "converters", "npu_moe_update_expert.py")


def _signature(function) -> list:
    """(name, has default, default) per parameter."""
    return [
        (p.name, p.default is not inspect.Parameter.empty, None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(function).parameters.values()
    ]


def _converter_signature() -> list:
    """The converter's parameters read from its source: importing it needs torchair."""
    with open(CONVERTER_FILE, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    function = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "convert_npu_moe_update_expert"
    )
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    return [
        (a.arg, d is not None, None if d is None else ast.literal_eval(d)) for a, d in pairs if a.arg != "meta_outputs"
    ]  # torchair's own extra argument


ENTRY_POINTS = {
    "ops.npu_moe_update_expert (the wrapper)": lambda: _signature(ops.npu_moe_update_expert),
    "fake.npu_moe_update_expert_fake": lambda: _signature(npu_moe_update_expert_fake),
    "reference.npu_moe_update_expert_reference": lambda: _signature(npu_moe_update_expert_reference),
    "converters/npu_moe_update_expert.py convert_npu_moe_update_expert": _converter_signature,
    "schema.OpArguments (what the checks take)": lambda: _signature(schema.OpArguments),
}


def test_every_entry_point_restates_the_schema_exactly():
    # A Python caller of these gets the signature's defaults, not the schema's: they must agree.
    # Adding an attribute is SCHEMA plus these; this names every one still to be edited.
    expected = [(a.name, a.has_default, a.default) for a in schema.ARGUMENTS]
    disagreeing = {name: read() for name, read in ENTRY_POINTS.items() if read() != expected}
    assert not disagreeing, "\n".join(
        [f"these entry points disagree with schema.SCHEMA {expected}:"]
        + [f"  {name}: {got}" for name, got in disagreeing.items()]
    )


def test_a_disagreeing_entry_point_is_named(monkeypatch):
    def stale(
        expert_ids,
        eplb_table,
        expert_scales=None,
        pruning_threshold=None,
        active_mask=None,
        local_rank_id=-1,
        world_size=-1,
    ):
        pass

    monkeypatch.setitem(ENTRY_POINTS, "a stale fake", lambda: _signature(stale))
    with pytest.raises(AssertionError, match=r"disagree with schema.SCHEMA(.|\n)*  a stale fake: ") as info:
        test_every_entry_point_restates_the_schema_exactly()
    assert "reference" not in str(info.value)


def test_the_argument_object_is_picked_from_an_entry_points_locals():
    args = schema.arguments(
        dict(
            expert_ids=1,
            eplb_table=2,
            expert_scales=None,
            pruning_threshold=None,
            active_mask=None,
            local_rank_id=0,
            world_size=4,
            balance_mode=1,
            meta_outputs=3,
        )
    )
    assert (args.expert_ids, args.world_size, args.balance_mode) == (1, 4, 1)
    with pytest.raises(TypeError, match="lacks the schema's argument 'expert_scales'"):
        schema.arguments(dict(expert_ids=1, eplb_table=2))


def test_converter_node_follows_the_schema_tables(monkeypatch):
    require_ge_capture()
    from torchair_plugin import _converter_hook

    module = _converter_hook.converter_module()
    emitted = {}
    monkeypatch.setattr(
        module,
        "custom_op",
        lambda op_type, inputs, outputs, attrs: emitted.update(
            op_type=op_type, inputs=list(inputs), attrs=sorted(attrs)
        ),
    )
    ids, table = object(), object()  # the converter does not look inside its tensors
    module.convert_npu_moe_update_expert(ids, table, local_rank_id=1, world_size=4)
    assert emitted == {
        "op_type": "MoeUpdateExpert",
        "inputs": ["expert_ids", "eplb_table"],
        "attrs": ["local_rank_id", "world_size"],
    }
    # A changed default in the schema changes which attrs the node spells out.
    monkeypatch.setattr(schema, "ATTR_DEFAULTS", {**schema.ATTR_DEFAULTS, "world_size": 4})
    module.convert_npu_moe_update_expert(ids, table, local_rank_id=1, world_size=4, balance_mode=0)
    assert emitted["attrs"] == ["local_rank_id"]


# --- the installed torch-npu's own declaration ----------------------------------------------------

_DECLARATION = re.compile(r"func:\s*" + re.escape(schema.OP_NAME) + r"(\([^\n]*\)\s*->\s*[^\n]*?)\s*$", re.MULTILINE)


def _torch_npu_declarations(package_dir: str) -> dict:
    """``{yaml path: schema text}`` for every yaml in the wheel that declares the op.

    torch-npu 2.6 .. 2.14 declare it in ``csrc/aten/npu_native_functions_by_codegen.yaml`` as
    ``func: npu_moe_update_expert(...) -> (...)``; every yaml is read so that a wheel moving the
    file still gets compared.
    """
    found = {}
    for path in sorted(glob.glob(os.path.join(package_dir, "**", "*.yaml"), recursive=True)):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for match in _DECLARATION.finditer(handle.read()):
                found.setdefault(os.path.relpath(path, package_dir), []).append(match.group(1).strip("'\""))
    return found


def test_schema_is_the_installed_torch_npus():
    package_dir = environment.torch_npu_dir()
    if package_dir is None:
        pytest.skip("torch-npu is not installed")
    declarations = _torch_npu_declarations(package_dir)
    if not declarations:
        pytest.skip(
            f"the installed torch-npu ({package_dir}) declares no {schema.OP_NAME} in its yaml files "
            "(older wheels have only npu_moe_eplb_update_expert)"
        )
    ours = torch._C.parse_schema(schema.QUALNAME + schema.SCHEMA)
    for path, texts in declarations.items():
        for text in texts:
            theirs = torch._C.parse_schema(schema.QUALNAME + text)
            assert str(theirs) == str(ours), f"{path} declares {text}"
