"""A one-layer MoE routing module for the EPLB loop tests: the op reads a table buffer and an
ExpertLoadRecorder counts what it returns, as a serving model would hold them."""

import pytest
import torch
from test_compile import _inductor_unusable_here
from torch._dynamo.testing import CompileCounterWithBackend

from torchair_plugin.eplb import ExpertLoadRecorder


class Routing(torch.nn.Module):
    """``forward(ids, scales)`` -> the op's (balanced ids, mask); with ``recorder`` it also records.

    The op is looked up at call time: an OpOverload object taken before torchair's first import
    (which loads torch_npu) can dispatch to another npu op afterwards."""

    def __init__(
        self,
        table: torch.Tensor,
        *,
        k: int = 2,
        balance_mode: int = 1,
        local_rank_id: int = -1,
        world_size: int = -1,
        threshold: float = 0.3,
        recorder: ExpertLoadRecorder = None,
        layer=None,
    ):
        super().__init__()
        self.register_buffer("table", table)
        # A tensor, not a Python float: dynamic=True makes float attributes symbolic, and Dynamo
        # then restarts the frame once (a second backend call) to specialise it.
        self.register_buffer("threshold", torch.full((k,), threshold, device=table.device))
        self.balance_mode, self.local_rank_id, self.world_size = balance_mode, local_rank_id, world_size
        self.recorder = recorder
        self.layer = layer

    def forward(self, ids, scales):
        balanced, mask = torch.ops.npu.npu_moe_update_expert(
            ids,
            self.table,
            expert_scales=scales,
            pruning_threshold=self.threshold,
            local_rank_id=self.local_rank_id,
            world_size=self.world_size,
            balance_mode=self.balance_mode,
        )
        if self.recorder is not None:
            self.recorder.record(balanced, mask, layer=self.layer)
        return balanced, mask


def inputs(bs, k, num_experts, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_experts, generator=gen)[:k] for _ in range(bs)])
    scales = torch.rand(bs, k, generator=gen).sort(dim=1, descending=True).values
    return ids, scales


def fresh_counter(backend: str) -> CompileCounterWithBackend:
    """A compile counter for ``backend`` after a Dynamo reset; skips inductor where torch_npu's
    hook makes it unusable (see test_compile)."""
    if backend == "inductor":
        reason = _inductor_unusable_here()
        if reason:
            pytest.skip(reason)
    torch._dynamo.reset()
    return CompileCounterWithBackend(backend)
