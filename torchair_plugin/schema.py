"""The operator's identity: namespace, name and schema, identical to torch_npu's."""

NAMESPACE = "npu"
OP_NAME = "npu_moe_update_expert"
QUALNAME = f"{NAMESPACE}::{OP_NAME}"

# Copied from no one: this is the contract in docs/op.md ("Prototype"), and must stay
# byte-for-byte equal to torch_npu's so that code written for Ascend runs unchanged.
SCHEMA = (
    "(Tensor expert_ids, Tensor eplb_table, *, Tensor? expert_scales=None, "
    "Tensor? pruning_threshold=None, Tensor? active_mask=None, int local_rank_id=-1, "
    "int world_size=-1, int balance_mode=0) -> (Tensor, Tensor)"
)
