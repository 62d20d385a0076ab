"""The checks the NPU applies to npu_moe_update_expert, enforced at trace time.

On the device these fail as ACLNN error 561002 with the reason buried in the plog. Here every
failure names the parameter, the limit and the value it got. The order is the kernel's tiling
order, so the first message a user sees is the one the NPU would have logged.

Sizes may be SymInts (dynamic batch): they are only ever tested through ``torch._check``, which
records a runtime assert or a range guard instead of specialising the graph on the value.

Every check takes the call's :class:`~torchair_plugin.schema.OpArguments` (``args``).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch

from torchair_plugin import limits
from torchair_plugin.schema import INPUTS, OP_NAME


def _show(value) -> str:
    """A value for a message: symbolic sizes are shown with the concrete size they stand for."""
    if isinstance(value, torch.SymInt):
        hint = value.node.hint
        return str(value) if hint is None else f"{hint} (symbolic {value})"
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _fail_message(parameter: str, limit: str, got) -> str:
    return f"{OP_NAME}: {parameter} must be {limit}, got {_show(got)}"


def _check(condition, parameter: str, limit: str, got) -> None:
    if condition is True:  # concrete and satisfied: skip torch._check's machinery (hot path)
        return
    torch._check(condition, lambda: _fail_message(parameter, limit, got))


def _check_dtype(name: str, tensor: Optional[torch.Tensor]) -> None:
    if tensor is not None and tensor.dtype not in limits.INPUT_DTYPES[name]:
        got = str(tensor.dtype).replace("torch.", "")
        _check(False, f"{name}.dtype", " or ".join(limits.dtype_names(name)), got)


def _check_range(parameter: str, value, low: int, high: int, *, low_open: bool = False) -> None:
    """Check ``low <(=) value <= high``, described the way the kernel docs write intervals."""
    low_ok = value > low if low_open else value >= low
    if low_ok is True and value <= high:
        return
    interval = f"in {'(' if low_open else '['}{low}, {high}]"
    _check(low_ok, parameter, interval, value)
    _check(value <= high, parameter, interval, value)


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple, expected_text: str) -> None:
    """``tensor.shape == expected``, each size through _check (they may be symbolic)."""
    got = tensor.shape
    rank_ok = len(got) == len(expected)
    sizes_ok = [g == e for g, e in zip(got, expected)] if rank_ok else []
    if rank_ok and all(ok is True for ok in sizes_ok):
        return
    limit = f"{expected_text} = {tuple(expected)}"
    _check(rank_ok, f"{name}.shape", limit, tuple(got))
    for ok in sizes_ok:
        _check(ok, f"{name}.shape", limit, tuple(got))


def check_required_tensors(expert_ids, eplb_table) -> None:
    """The two required inputs are tensors. torch's dispatcher passes ``None`` for a ``Tensor``
    argument straight to Python kernels, where it would surface as an AttributeError."""
    for name, value, shape in (
        ("expert_ids", expert_ids, "(BS, K)"),
        ("eplb_table", eplb_table, "(moe_expert_num, F)"),
    ):
        if not isinstance(value, torch.Tensor):
            _check(False, name, f"a tensor {shape}", "None" if value is None else type(value).__name__)


def check_attributes(args: Any) -> None:
    """The Int attrs: balance_mode first, then (mode 0 only) world_size and local_rank_id."""
    local_rank_id, world_size, balance_mode = args.local_rank_id, args.world_size, args.balance_mode
    # torch.ops refuses a non-integer before any kernel runs; a direct call of a kernel must too.
    for name, value in (("local_rank_id", local_rank_id), ("world_size", world_size), ("balance_mode", balance_mode)):
        if type(value) is not int and not isinstance(value, (numbers.Integral, torch.SymInt)):
            _check(False, name, "an int", f"{value!r} ({type(value).__name__})")
    _check(balance_mode in limits.BALANCE_MODES, "balance_mode", "0 or 1", balance_mode)
    if balance_mode == 0:
        _check_range("world_size", world_size, limits.MIN_WORLD_SIZE, limits.MAX_WORLD_SIZE)
        if not 0 <= local_rank_id < world_size:
            _check(False, "local_rank_id", f"in [0, world_size={world_size})", local_rank_id)


def check_optional_inputs(args: Any) -> None:
    """Pruning needs both expert_scales and pruning_threshold; active_mask only works with them."""
    active_mask = args.active_mask
    has_scales, has_threshold = args.expert_scales is not None, args.pruning_threshold is not None
    if has_scales != has_threshold:
        _check(
            False,
            "expert_scales and pruning_threshold",
            "given together (pruning needs both)",
            f"expert_scales={'given' if has_scales else 'None'}, "
            f"pruning_threshold={'given' if has_threshold else 'None'}",
        )
    if active_mask is not None and not has_scales:
        _check(
            False,
            "active_mask",
            "None unless expert_scales and pruning_threshold are given (the NPU applies it only when pruning)",
            "a tensor",
        )


def check_arguments(args: Any) -> None:
    """Every check of the NPU's tiling, in its order. Raises RuntimeError naming the culprit."""
    expert_ids, eplb_table, world_size, balance_mode = (
        args.expert_ids,
        args.eplb_table,
        args.world_size,
        args.balance_mode,
    )
    expert_scales, pruning_threshold, active_mask = args.expert_scales, args.pruning_threshold, args.active_mask
    check_required_tensors(expert_ids, eplb_table)
    check_attributes(args)

    tensors = {name: getattr(args, name) for name in INPUTS}
    for name, tensor in tensors.items():
        _check_dtype(name, tensor)

    _check(expert_ids.dim() == 2, "expert_ids.dim()", "2 (BS, K)", expert_ids.dim())
    bs, k = expert_ids.shape
    _check_range("BS = expert_ids.size(0)", bs, 0, limits.MAX_BS, low_open=True)
    _check_range("K = expert_ids.size(1)", k, 0, limits.MAX_K, low_open=True)

    _check(eplb_table.dim() == 2, "eplb_table.dim()", "2 (moe_expert_num, F)", eplb_table.dim())
    num_experts, f = eplb_table.shape
    _check_range("moe_expert_num = eplb_table.size(0)", num_experts, 0, limits.MAX_EXPERTS, low_open=True)
    experts_ok = num_experts >= k
    if experts_ok is not True:
        _check(experts_ok, "moe_expert_num = eplb_table.size(0)", f">= K={k}", num_experts)
    f_max = world_size + 1 if balance_mode == 0 else limits.MODE1_MAX_F
    f_low_ok, f_high_ok = f > 1, f <= f_max
    if f_low_ok is not True or f_high_ok is not True:
        f_limit = f"world_size+1={f_max}" if balance_mode == 0 else f"{f_max} (balance_mode 1)"
        _check(f_low_ok, "F = eplb_table.size(1)", f"in (1, {f_limit}]", f)
        _check(f_high_ok, "F = eplb_table.size(1)", f"in (1, {f_limit}]", f)

    # Sizes are compared one _check at a time: a Python `and` on SymBools would guard on them.
    if expert_scales is not None:
        _check_shape("expert_scales", expert_scales, (bs, k), "(BS, K)")
    if pruning_threshold is not None:
        if pruning_threshold.dim() == 2:
            _check_shape("pruning_threshold", pruning_threshold, (1, k), "(K,) or (1, K)")
        else:
            _check_shape("pruning_threshold", pruning_threshold, (k,), "(K,) or (1, K)")
    if active_mask is not None:
        _check_shape("active_mask", active_mask, (bs,), "(BS,)")
    check_optional_inputs(args)

    device = expert_ids.device
    for name, tensor in tensors.items():
        if tensor is not None:
            _check(tensor.device == device, f"{name}.device", f"expert_ids' device ({device})", tensor.device)
