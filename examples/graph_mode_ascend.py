# requires: npu
"""update_expert -> dispatch_v2 -> combine_v2 in one TorchAir graph, across ranks with HCCL.

    source /usr/local/Ascend/ascend-toolkit/set_env.sh
    torchrun --nproc-per-node 8 examples/graph_mode_ascend.py

Every rank maps its tokens' logical experts to physical replicas with npu_moe_update_expert
(balance_mode 0: its own replica group), prunes low-weight experts, dispatches the tokens to the
ranks holding those replicas, and combines them back. The experts themselves are left out (the
identity), so each token comes back as itself times the weight of the experts it kept.
Written from the op contract and the dispatch/combine schemas in torch-npu's
npu_native_functions_by_codegen.yaml. On a machine without an NPU it captures rank 0's step as
a GE graph instead (torchair's real lowering, CANN-less: needs torch-npu and a C compiler) and
prints it; where even that is impossible it says why. Either way it exits 0.
"""

import functools
import os
import sys

import torchair_plugin  # first: see examples/eager_cpu.py
import torch
import torch.distributed as dist
from torchair_plugin.eplb import expert_load, plan_placement, skewed_routing

EXPERTS = 64  # logical experts
REDUNDANT_SLOTS_PER_RANK = 1
TOKENS = 16  # BS per rank
TOP_K = 8
HIDDEN = 7168
PRUNING_THRESHOLD = 0.05


def npu_ready() -> bool:
    """torch_npu importable and an NPU visible. Without CANN, `import torch_npu` fails and leaves
    half-imported modules behind, so it is only tried where CANN's set_env.sh has run."""
    if not os.environ.get("ASCEND_HOME_PATH"):
        return False
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    return torch.npu.is_available()


def moe_layer(x, expert_ids, expert_scales, eplb_table, pruning_threshold, *, group, rank, world_size, moe_expert_num):
    """The expert-parallel step of a MoE layer, with EPLB redundancy and pruning.

    ``moe_expert_num`` is the number of PHYSICAL experts (the table's sum of counts): dispatch
    and combine address replicas, not logical experts.
    """
    physical_ids, keep = torch.ops.npu.npu_moe_update_expert(
        expert_ids,
        eplb_table,
        expert_scales=expert_scales,
        pruning_threshold=pruning_threshold,
        local_rank_id=rank,
        world_size=world_size,
        balance_mode=0,
    )
    expand_x, _, assist_info, _, ep_recv_counts, _, _ = torch.ops.npu.npu_moe_distribute_dispatch_v2(
        x, physical_ids, group, world_size, rank, moe_expert_num, x_active_mask=keep
    )
    # Expert FFNs would run on expand_x here.
    return torch.ops.npu.npu_moe_distribute_combine_v2(
        expand_x,
        physical_ids,
        assist_info,
        ep_recv_counts,
        expert_scales,
        group,
        world_size,
        rank,
        moe_expert_num,
        x_active_mask=keep,
    )


def inputs(rank: int, world_size: int, slots_per_rank: int, device):
    """Every rank plans the same table from the same seeded load; each routes its own tokens."""
    routing = skewed_routing(EXPERTS, world_size, TOKENS, TOP_K, skew=1.2, seed=0)
    load = expert_load(routing, EXPERTS, per_source=True)  # balance_mode 0 needs it per source rank
    table = plan_placement(load, world_size, slots_per_rank, balance_mode=0).eplb_table
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(TOKENS, HIDDEN, generator=generator).to(torch.bfloat16)
    scales = torch.softmax(torch.randn(TOKENS, TOP_K, generator=generator), dim=1).sort(dim=1, descending=True).values
    threshold = torch.full((TOP_K,), PRUNING_THRESHOLD)
    return [t.to(device) for t in (x, routing[rank].to(torch.int32), scales, table, threshold)]


def run_on_npu() -> None:
    import torch_npu  # noqa: F401  (npu_ready() imported it)
    import torchair

    dist.init_process_group("hccl")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.npu.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    group = dist.group.WORLD._get_backend(torch.device("npu")).get_hccl_comm_name(rank)

    slots_per_rank = -(-EXPERTS // world_size) + REDUNDANT_SLOTS_PER_RANK
    x, expert_ids, scales, table, threshold = inputs(rank, world_size, slots_per_rank, "npu")
    layer = functools.partial(
        moe_layer, group=group, rank=rank, world_size=world_size, moe_expert_num=world_size * slots_per_rank
    )
    backend = torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())
    compiled = torch.compile(layer, backend=backend, fullgraph=True, dynamic=False)
    out = compiled(x, expert_ids, scales, table, threshold)

    # Identity experts: each token returns as x times the weight of the experts it kept.
    _, keep = torchair_plugin.npu_moe_update_expert(
        expert_ids,
        table,
        expert_scales=scales,
        pruning_threshold=threshold,
        local_rank_id=rank,
        world_size=world_size,
    )
    expected = x.float() * (scales * keep).sum(dim=1, keepdim=True)
    error = (out.float() - expected).abs().max().item()
    print(
        f"rank {rank}: out {tuple(out.shape)}, kept {int(keep.sum())}/{keep.numel()} experts, "
        f"max |out - x * kept weight| = {error:.3g}"
    )
    dist.destroy_process_group()


def run_without_npu(world_size: int = 8) -> int:
    """Off the NPU: rank 0's step lowered to its GE graph by torchair, instead of run."""
    from torchair_plugin.testing import CannLessUnavailable, capture_ge_graphs, import_torchair

    print("graph_mode_ascend.py needs an Ascend NPU (CANN, torch_npu, HCCL) to run; none here.")
    try:
        import_torchair()
    except CannLessUnavailable as exc:
        print(f"GE graph capture is not possible here either: {exc}")
        return 0
    slots_per_rank = -(-EXPERTS // world_size) + REDUNDANT_SLOTS_PER_RANK
    layer = functools.partial(
        moe_layer, group="ep", rank=0, world_size=world_size, moe_expert_num=world_size * slots_per_rank
    )
    result = capture_ge_graphs(layer, *inputs(0, world_size, slots_per_rank, "cpu"), fullgraph=True)
    print(f"rank 0 of {world_size}, captured instead: {result.fx_graph_count} FX graph, GE graph:")
    print(result.graph.text)
    return 0


def main() -> int:
    if not npu_ready():
        return run_without_npu()
    run_on_npu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
