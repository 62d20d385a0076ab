"""Expert-parallel load with npu_moe_update_expert on a real process group.

    torchrun --nproc-per-node 4 examples/eplb_distributed.py [--routing R.pt --table T.pt] [--json OUT]

On a machine with torch-npu but no CANN, torchrun itself imports torch (whose torch_npu
autoload then fails) before this script runs: launch it as
``TORCH_DEVICE_BACKEND_AUTOLOAD=0 torchrun ...`` there.

Every rank routes its own tokens through the op with its own local_rank_id and world_size, then
exchanges per-destination token counts with all_to_all_single, as dispatch exchanges the tokens
themselves. Rank 0 prints the tokens each rank receives with no redundancy (one copy per expert),
balance_mode 0 and balance_mode 1. CPU with gloo; an Ascend NPU with HCCL when torch_npu sees one.
Without files, every rank generates the same skewed workload and plans the same table.
"""

import argparse
import json

import torchair_plugin  # noqa: F401  (first: registers the op, prepares `import torch` without CANN)
import torch
import torch.distributed as dist
from torchair_plugin.eplb import (
    SCENARIOS,
    expert_load,
    load_eplb_table,
    load_routing,
    physical_ranks,
    plan_placement,
    skewed_routing,
    source_expert_tokens,
)


def _device_and_backend():
    try:
        import torch_npu  # noqa: F401

        if torch.npu.is_available():
            return "npu", "hccl"
    except ImportError:
        pass
    return "cpu", "gloo"


def _inputs(args, world_size):
    table = load_eplb_table(args.table, world_size) if args.table else None
    num_experts = table.shape[0] if table is not None else args.experts
    if args.routing:
        routing = load_routing(args.routing)
    else:
        routing = skewed_routing(num_experts, world_size, args.tokens_per_rank, args.top_k, args.skew, args.seed)
    if routing.shape[0] != world_size:
        raise SystemExit(f"{args.routing} holds {routing.shape[0]} ranks, but world_size is {world_size}")
    if table is None:
        slots = -(-num_experts // world_size) + 2
        table = plan_placement(expert_load(routing, num_experts), world_size, slots).eplb_table
    return routing, table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routing", help="routing file (world_size, tokens, K): .pt, .npy or .json")
    parser.add_argument("--table", help="eplb_table file")
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--tokens-per-rank", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--skew", type=float, default=1.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="rank 0 writes the per-rank loads here")
    args = parser.parse_args()

    device, backend = _device_and_backend()
    dist.init_process_group(backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    routing, table = _inputs(args, world_size)
    my_tokens, table = routing[rank].to(device), table.to(device)
    slots = int(table[:, 0].sum()) // world_size

    received = {}
    for scenario in SCENARIOS:
        # What this rank sends to each physical expert of the scenario's layout, laid out by
        # destination rank (no redundancy has one copy per logical expert: its own layout).
        sent = source_expert_tokens(my_tokens, table, rank, world_size, scenario).to(device)
        owner = torch.from_numpy(physical_ranks(sent.shape[0], world_size)).to(device)
        held = torch.bincount(owner, minlength=world_size).tolist()  # physical experts per rank
        got = torch.empty(world_size * held[rank], dtype=sent.dtype, device=device)
        dist.all_to_all_single(got, sent, output_split_sizes=[held[rank]] * world_size, input_split_sizes=held)
        expert_tokens = torch.zeros_like(sent)
        expert_tokens[owner == rank] = got.view(world_size, held[rank]).sum(0)  # from every source
        dist.all_reduce(expert_tokens)  # each rank filled its own experts: the sum is the whole
        received[scenario] = expert_tokens.cpu()

    if rank == 0:
        result = {"world_size": world_size, "slots_per_rank": slots, "scenarios": {}}
        print(f"{'rank':>6} " + " ".join(f"{name:>15}" for name in SCENARIOS))
        per_rank = {
            name: torch.bincount(
                torch.from_numpy(physical_ranks(tokens.shape[0], world_size)), tokens, world_size
            ).long()
            for name, tokens in received.items()
        }
        for r in range(world_size):
            print(f"{r:>6} " + " ".join(f"{int(per_rank[name][r]):>15}" for name in SCENARIOS))
        for name in SCENARIOS:
            loads = per_rank[name].double()
            imbalance = float(loads.max() / loads.mean())
            print(f"{name}: max/mean {imbalance:.3f}")
            result["scenarios"][name] = {
                "imbalance": imbalance,
                "rank_tokens": per_rank[name].tolist(),
                "expert_tokens": received[name].tolist(),
            }
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
