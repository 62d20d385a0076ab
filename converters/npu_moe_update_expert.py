"""GE converter for ``npu.npu_moe_update_expert``: one ``MoeUpdateExpert`` node, nothing else.

The node is the GE IR of docs/ge-lowering.md (the op itself: docs/op.md): inputs expert_ids, eplb_table and the
optional expert_scales, pruning_threshold, active_mask, in that order; Int attrs local_rank_id
(-1), world_size (-1), balance_mode (0); outputs balanced_expert_ids (expert_ids' dtype) and
balanced_active_mask (bool). Output dtypes and shapes are set by torchair from ``meta_outputs``
(the fake kernel's outputs) after the converter returns, for static and symbolic shapes alike,
so the converter adds no Cast and no Identity for any valid input.

Spelling: absent optional inputs are left out and attrs equal to their IR default are not set,
exactly as torchair's own IR path (``ge_op(ir=...)``) writes this node, so the node is the one
torch-npu's converter emits. GE fills in IR defaults; leaving them out also keeps the node
loadable by a CANN whose IR predates an attr, as long as that attr is at its default. Absent
inputs are always trailing (the checks below allow none, scales+threshold, or all three).

Importing this module registers nothing: :mod:`torchair_plugin._converter_hook` registers
:func:`convert_npu_moe_update_expert` when torchair is imported.
"""

from typing import Optional

from torchair.ge import Tensor, TensorSpec, attr, custom_op  # public torchair API only

from torchair_plugin import schema
from torchair_plugin.checks import check_attributes, check_optional_inputs

OUTPUTS = ("balanced_expert_ids", "balanced_active_mask")


def convert_npu_moe_update_expert(
    expert_ids: Tensor,
    eplb_table: Tensor,
    *,
    expert_scales: Optional[Tensor] = None,
    pruning_threshold: Optional[Tensor] = None,
    active_mask: Optional[Tensor] = None,
    local_rank_id: int = -1,
    world_size: int = -1,
    balance_mode: int = 0,
    meta_outputs: Optional[TensorSpec] = None,
):
    # The signature mirrors the schema (a test checks it): the node's inputs and attrs are then
    # picked from the arguments by the schema's own tables, in its order.
    args = schema.arguments(locals())
    # The fake kernel has already run these (and every shape/dtype check); they are repeated
    # because the attrs and the optional-input pattern are what this node encodes, and a graph
    # reaching here without the fake (a hand-built FX graph) must fail the same clear way.
    check_attributes(args)
    check_optional_inputs(args)
    inputs = {name: getattr(args, name) for name in schema.INPUTS if getattr(args, name) is not None}
    attrs = {
        name: attr.Int(getattr(args, name))
        for name, default in schema.ATTR_DEFAULTS.items()
        if getattr(args, name) != default
    }
    return custom_op(schema.GE_OP_TYPE, inputs=inputs, outputs=list(OUTPUTS), attrs=attrs)
