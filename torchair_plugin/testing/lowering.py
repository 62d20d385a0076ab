"""One lowering of the op (or of the update -> dispatch_v2 -> combine_v2 chain), described by its
shapes and attributes: example inputs, the function to compile, and its captured GE graph.

:class:`LowerSpec` is what ``torchair-plugin lower`` and ``demo`` lower and what the benchmarks
time; the command line only turns arguments into one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from torchair_plugin import limits
from torchair_plugin.schema import OPTIONAL_INPUTS

IDS_DTYPES = limits.dtype_names("expert_ids")
SCALES_DTYPES = limits.dtype_names("expert_scales")
X_DTYPES = ("bfloat16", "float16")  # dispatch_v2's x (chain), not an input of this op
MAX_HIDDEN = 65536  # --hidden: a bound of this tool (x is BS x hidden), not of dispatch_v2


@dataclass(frozen=True)
class LowerSpec:
    """One lowering: the op's shapes and attrs, which optional inputs, dtypes, dynamism."""

    bs: int = 8
    k: int = 4
    experts: int = 16
    f: Optional[int] = None  # eplb_table columns; None: world_size + 1
    physical_experts: Optional[int] = None  # slots over all ranks (dispatch's moe_expert_num); None: experts
    world_size: int = 4
    rank: int = 1
    balance_mode: int = 0
    optional: Tuple[str, ...] = ()
    ids_dtype: str = "int32"
    scales_dtype: str = "float32"
    threshold_2d: bool = False
    dynamic: bool = False
    chain: bool = False
    chain_version: str = "v2"  # "v1": npu_moe_distribute_dispatch/combine instead of the _v2 pair
    hidden: int = 32
    x_dtype: str = "bfloat16"

    @property
    def columns(self) -> int:
        return self.f if self.f is not None else self.world_size + 1

    @property
    def physical(self) -> int:
        return self.physical_experts if self.physical_experts is not None else self.experts

    def attrs(self) -> dict:
        # Mode 1 ignores rank and world size, but they are still the node's attributes: a model
        # passes them, and the lowered graph should show what it passed.
        return {"local_rank_id": self.rank, "world_size": self.world_size, "balance_mode": self.balance_mode}

    def inputs(self, device: str = "cpu") -> List[Any]:
        """expert_ids, eplb_table, the chosen optional inputs, and for the chain x (and combine's
        expert_scales when the op is not given them). Valid values, every token active: physical
        expert p is a replica of logical expert p % experts (without redundancy, p = e)."""
        import torch

        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.experts, (self.bs, self.k), generator=g).to(getattr(torch, self.ids_dtype))
        table = torch.zeros(self.experts, self.columns, dtype=torch.int32)
        physical = torch.arange(self.physical, dtype=torch.int32)
        table[:, 0] = torch.bincount(physical % self.experts, minlength=self.experts)
        if self.columns > 1:  # F = 1 is the op's to reject, with its own message
            table[physical % self.experts, 1 + physical // self.experts] = physical
        given = {
            "expert_scales": torch.rand(self.bs, self.k, generator=g).to(getattr(torch, self.scales_dtype)),
            "pruning_threshold": torch.full((1, self.k) if self.threshold_2d else (self.k,), 0.05),
            "active_mask": torch.ones(self.bs, dtype=torch.bool),
        }
        args = [ids, table] + [given[name] for name in OPTIONAL_INPUTS if name in self.optional]
        if self.chain:
            args.append(torch.randn(self.bs, self.hidden, generator=g).to(getattr(torch, self.x_dtype)))
            if "expert_scales" not in self.optional:  # combine needs its own weights then
                args.append(torch.rand(self.bs, self.k, generator=g))
        return [a.to(device) for a in args]

    def meta_inputs(self) -> List[Any]:
        """:meth:`inputs`' shapes and dtypes as meta tensors: nothing allocated, so the op's checks
        can refuse a size before any memory is spent on it."""
        import torch

        def meta(shape, dtype):
            return torch.empty(shape, dtype=dtype, device="meta")

        given = {
            "expert_scales": meta((self.bs, self.k), getattr(torch, self.scales_dtype)),
            "pruning_threshold": meta((1, self.k) if self.threshold_2d else (self.k,), torch.float32),
            "active_mask": meta((self.bs,), torch.bool),
        }
        args = [
            meta((self.bs, self.k), getattr(torch, self.ids_dtype)),
            meta((self.experts, self.columns), torch.int32),
        ]
        args += [given[name] for name in OPTIONAL_INPUTS if name in self.optional]
        if self.chain:
            args.append(meta((self.bs, self.hidden), getattr(torch, self.x_dtype)))
            if "expert_scales" not in self.optional:
                args.append(meta((self.bs, self.k), torch.float32))
        return args

    def function(self) -> Callable:
        """The function to compile; its positional arguments are :meth:`inputs`."""
        import torch

        attrs, names, chain = self.attrs(), [n for n in OPTIONAL_INPUTS if n in self.optional], self.chain
        group_size, rank, experts = self.world_size, self.rank, self.physical
        suffix = "_v2" if self.chain_version == "v2" else ""
        dispatch: Any = getattr(torch.ops.npu, f"npu_moe_distribute_dispatch{suffix}") if chain else None
        combine: Any = getattr(torch.ops.npu, f"npu_moe_distribute_combine{suffix}") if chain else None

        def update(ids, table, *rest):
            optional = dict(zip(names, rest))
            outputs = torch.ops.npu.npu_moe_update_expert(ids, table, **optional, **attrs)
            if not chain:
                return outputs
            balanced_ids, balanced_mask = outputs
            x = rest[len(names)]
            scales = optional["expert_scales"] if "expert_scales" in optional else rest[len(names) + 1]
            # v1 and v2 agree on these positions: (expand_x, _, expand_idx / assist_info, _, ep_recv_counts, ...)
            expand_x, _, assist_info, _, ep_recv_counts, _, _ = dispatch(
                x, balanced_ids, "ep", group_size, rank, experts, x_active_mask=balanced_mask
            )
            return combine(
                expand_x,
                balanced_ids,
                assist_info,
                ep_recv_counts,
                scales.float(),
                "ep",
                group_size,
                rank,
                experts,
                x_active_mask=balanced_mask,
            )

        return update

    def problem(self) -> Optional[str]:
        """Why these sizes cannot describe a call the op accepts (sizes the op's own checks do not
        bound, checked before anything is allocated), or None."""
        if self.chain and self.hidden > MAX_HIDDEN:
            return f"--hidden must be in [1, {MAX_HIDDEN}] (a sane bound of this tool), got {self.hidden}"
        if self.chain_version not in ("v1", "v2"):
            return f"the chain is v1 or v2, got {self.chain_version!r}"
        if self.physical_experts is None:
            return None
        physical = self.physical
        if physical > limits.MAX_EXPERTS:
            return (
                f"--physical-experts must be <= {limits.MAX_EXPERTS} (the op's bound on the sum of replica "
                f"counts), got {physical}"
            )
        if physical < self.experts or physical % self.world_size:
            return (
                f"--physical-experts must be >= --experts={self.experts} and divisible by "
                f"--world-size={self.world_size}, got {physical}"
            )
        replicas = -(-physical // self.experts)
        if replicas > self.columns - 1:
            return (
                f"--physical-experts={physical} puts up to {replicas} replicas on one of {self.experts} logical "
                f"experts: eplb_table needs --f >= {replicas + 1}, got {self.columns}"
            )
        return None


def lower(spec: LowerSpec) -> Any:
    """The :class:`~torchair_plugin.testing.capture.CapturedGraph` of ``spec``.

    Raises ``CannLessUnavailable`` where capture cannot run, and the op's own RuntimeError
    (checked eagerly on meta tensors first, so the message is the op's, not Dynamo's) for
    shapes or attributes the NPU would reject.
    """
    from torchair_plugin.testing import capture_ge_graphs, import_torchair

    import_torchair()  # also makes the chain's companion ops runnable on CPU
    fn = spec.function()
    fn(*spec.meta_inputs())  # the op's checks, before a byte of the real inputs is allocated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return capture_ge_graphs(fn, *spec.inputs(), dynamic=spec.dynamic).graph
