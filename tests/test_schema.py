"""torchair_plugin.schema: the op's one schema, the tables derived from it, and torch-npu's own copy."""

import glob
import inspect
import os
import re

import pytest
import torch

from torchair_plugin import _environment, checks, limits, ops, schema
from torchair_plugin.testing import lowering as lower
from torchair_plugin.fake import npu_moe_update_expert_fake
from torchair_plugin.reference import npu_moe_update_expert_reference
from torchair_plugin.testing import graph_text
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
    return (argument.name, base.kind() == "TensorType", optional, argument.kwarg_only,
            argument.has_default_value(), default)


def _our_view(argument: schema.Argument) -> tuple:
    return (argument.name, argument.is_tensor, argument.optional, argument.kwarg_only, argument.has_default,
            argument.default)


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


SCHEMA_SHAPED = {
    "ops.npu_moe_update_expert": ops.npu_moe_update_expert,
    "fake": npu_moe_update_expert_fake,
    "reference": npu_moe_update_expert_reference,
    "checks.check_update_expert_args": checks.check_update_expert_args,
}


@pytest.mark.parametrize("name", SCHEMA_SHAPED)
def test_schema_shaped_signatures_match_the_schema(name):
    _assert_mirrors_schema(SCHEMA_SHAPED[name])


def test_converter_signature_matches_the_schema():
    require_ge_capture()
    from torchair_plugin import _converter_hook

    _assert_mirrors_schema(_converter_hook.converter_module().convert_npu_moe_update_expert, extra=("meta_outputs",))


def _assert_mirrors_schema(function, extra=()):
    # A Python caller of these gets the defaults of the signature, not the schema's: they must agree.
    parameters = [p for p in inspect.signature(function).parameters.values() if p.name not in extra]
    assert [p.name for p in parameters] == [a.name for a in schema.ARGUMENTS]
    for parameter, argument in zip(parameters, schema.ARGUMENTS):
        has_default = parameter.default is not inspect.Parameter.empty
        assert (has_default, parameter.default if has_default else None) == (argument.has_default, argument.default), (
            f"{function.__qualname__}({parameter.name}) disagrees with the schema's {argument}"
        )


def test_converter_node_follows_the_schema_tables(monkeypatch):
    require_ge_capture()
    from torchair_plugin import _converter_hook

    module = _converter_hook.converter_module()
    emitted = {}
    monkeypatch.setattr(module, "custom_op", lambda op_type, inputs, outputs, attrs: emitted.update(
        op_type=op_type, inputs=list(inputs), attrs=sorted(attrs)))
    ids, table = object(), object()  # the converter does not look inside its tensors
    module.convert_npu_moe_update_expert(ids, table, local_rank_id=1, world_size=4)
    assert emitted == {"op_type": "MoeUpdateExpert", "inputs": ["expert_ids", "eplb_table"],
                       "attrs": ["local_rank_id", "world_size"]}
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
    package_dir = _environment.torch_npu_dir()
    if package_dir is None:
        pytest.skip("torch-npu is not installed")
    declarations = _torch_npu_declarations(package_dir)
    if not declarations:
        pytest.skip(f"the installed torch-npu ({package_dir}) declares no {schema.OP_NAME} in its yaml files "
                    "(older wheels have only npu_moe_eplb_update_expert)")
    ours = torch._C.parse_schema(schema.QUALNAME + schema.SCHEMA)
    for path, texts in declarations.items():
        for text in texts:
            theirs = torch._C.parse_schema(schema.QUALNAME + text)
            assert str(theirs) == str(ours), f"{path} declares {text}"
