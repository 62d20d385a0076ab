"""The public Python wrapper, with torch_npu.npu_moe_update_expert's keyword signature."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from torchair_plugin import _registration_state
from torchair_plugin.checks import check_required_tensors
from torchair_plugin.reference import npu_moe_update_expert_reference

_is_compiling = torch.compiler.is_compiling
_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_dispatch_mode_count = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active
_profiler_enabled = torch._C._autograd._profiler_enabled
_jit_tracing_state = torch._C._get_tracing_state


def _plain_cpu(tensor: Optional[torch.Tensor]) -> bool:
    return tensor is None or (type(tensor) is torch.Tensor and tensor.is_cpu)


def _dispatcher_would_run_the_reference(expert_ids, eplb_table, expert_scales, pruning_threshold,
                                        active_mask, local_rank_id, world_size, balance_mode) -> bool:
    """Whether ``torch.ops`` would do nothing but call the plugin's CPU kernel with these arguments.

    True only in plain eager mode: not while Dynamo or ``torch.jit.trace`` traces (they must
    record the op), no torch function or dispatch mode (FakeTensorMode, make_fx, a user's mode),
    no functorch transform, no profiler (its trace should show the op), plain CPU tensors (no subclass, no other device
    for the dispatcher to pick a kernel by), ints the schema would accept unchanged, and the
    plugin's reference registered as the op's CPU kernel.
    """
    if _is_compiling() or _torch_function_mode_enabled() or _dispatch_mode_count() or _functorch_active():
        return False
    if _profiler_enabled() or _jit_tracing_state() is not None:
        return False
    registration = _registration_state.registration
    if registration is None or "CPU" not in registration.plan.reference_keys:
        return False
    return (
        _plain_cpu(expert_ids) and _plain_cpu(eplb_table) and _plain_cpu(expert_scales)
        and _plain_cpu(pruning_threshold) and _plain_cpu(active_mask)
        and type(local_rank_id) is int and type(world_size) is int and type(balance_mode) is int
    )


def npu_moe_update_expert(
    expert_ids: torch.Tensor,
    eplb_table: torch.Tensor,
    *,
    expert_scales: Optional[torch.Tensor] = None,
    pruning_threshold: Optional[torch.Tensor] = None,
    active_mask: Optional[torch.Tensor] = None,
    local_rank_id: int = -1,
    world_size: int = -1,
    balance_mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map top-K logical expert ids to physical ids and prune low-weight experts.

    Returns ``(balanced_expert_ids, balanced_active_mask)``, both (BS, K); feed them to
    ``npu_moe_distribute_dispatch_v2`` as ``expert_ids`` and ``x_active_mask``. Calls
    ``torch.ops.npu.npu_moe_update_expert``: the native kernel on an NPU, the plugin's reference
    kernel elsewhere; traceable by torch.compile. See docs/op.md for the exact semantics.

    In plain eager mode on CPU tensors the reference kernel is called directly, the kernel the
    dispatcher would pick: the dispatcher's trip into a Python kernel and back costs about as
    much as the op's own work at serving sizes (bench/bench_op.py). Under torch.compile, a
    torch function or dispatch mode, functorch, the profiler, a tensor subclass or another
    device, the call goes through ``torch.ops`` as before.
    """
    # The dispatcher lets None through for a Tensor argument; the kernels would then fail on
    # ``None.shape`` instead of naming the argument.
    check_required_tensors(expert_ids, eplb_table)
    if _dispatcher_would_run_the_reference(expert_ids, eplb_table, expert_scales, pruning_threshold,
                                           active_mask, local_rank_id, world_size, balance_mode):
        return npu_moe_update_expert_reference(
            expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
            local_rank_id, world_size, balance_mode,
        )
    return torch.ops.npu.npu_moe_update_expert.default(
        expert_ids,
        eplb_table,
        expert_scales=expert_scales,
        pruning_threshold=pruning_threshold,
        active_mask=active_mask,
        local_rank_id=local_rank_id,
        world_size=world_size,
        balance_mode=balance_mode,
    )
