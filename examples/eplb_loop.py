"""The EPLB loop inside a compiled MoE model, on a real process group.

    torchrun --nproc-per-node 4 examples/eplb_loop.py [--steps 400] [--rebalance-every 50]
        [--balance-mode 1] [--backend aot_eager] [--png loop.png] [--json loop.json]

On a machine with torch-npu but no CANN, launch it as ``TORCH_DEVICE_BACKEND_AUTOLOAD=0 torchrun ...``
(torchrun imports torch before this script can prepare it). CPU with gloo; on an Ascend box
torch_npu's HCCL: the same command, each rank on its NPU. ``--backend`` takes a torch.compile
backend name, or ``torchair``: torchair's GE backend with ``frozen_parameter`` on (the table is a
buffer whose address GE then fixes: the in-place update is what keeps it correct). Without CANN,
``--backend torchair --run-eagerly`` lowers every graph to GE and runs its FX graph eagerly (a
check of the GE lowering on CPU, not a GE run).

Each rank serves a tiny L-layer MoE router step after step: top-K logical experts per token from
a skewed popularity whose hot experts drift every ``--drift-every`` steps, then per layer the op
(balanced ids, pruning mask), the load recorder and a dispatch stand-in (tokens per destination
rank) -- one compiled graph. Two copies run side by side on the same tokens: one keeps its first
table, the other rebalances every ``--rebalance-every`` steps:

1. all-reduce of the recorded window (tokens per physical expert, per layer);
2. one ``plan_model`` call for every layer, from the current tables (``previous=``): replicas stay
   in their slots unless moving them buys balance, so a rebalance copies few expert weights;
3. ``rebalance_gain``: balancedness now and predicted, replicas moved; skipped below ``--min-gain``;
4. ``StableEplbTable.update``: validated, digest-checked on every rank, written in place.

Rank 0 prints balancedness with and without rebalancing, compiles per rank (1 each), replicas
moved per rebalance and the recorder's cost per step against a host ``bincount``; it writes the
numbers (``--json``) and a chart of balancedness per step (``--png``, needs matplotlib).
"""

import argparse
import json
import time

import torchair_plugin  # noqa: F401  (first: registers the op, prepares `import torch` without CANN)
import torch
import torch.distributed as dist
from torch._dynamo.testing import CompileCounterWithBackend

from torchair_plugin.eplb import (
    ExpertLoadRecorder,
    StableEplbTable,
    logical_load,
    plan_model,
    rebalance_gain,
    table_from_phy2log,
)


class TinyMoERouter(torch.nn.Module):
    """Per layer: the op, the recorder (optional), and tokens per destination rank (dispatch's
    split sizes). ``table`` (L, E, F) is the StableEplbTable's tensor, held as a buffer."""

    def __init__(self, table, recorder, rank, world_size, balance_mode, threshold):
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("threshold", threshold)
        self.recorder = recorder
        self.rank, self.world_size, self.balance_mode = rank, world_size, balance_mode
        self.slots = int(table[0, :, 0].sum()) // world_size

    def forward(self, ids, scales):
        received = []
        for layer in range(self.table.shape[0]):
            balanced, mask = torch.ops.npu.npu_moe_update_expert(
                ids[layer],
                self.table[layer],
                expert_scales=scales[layer],
                pruning_threshold=self.threshold,
                local_rank_id=self.rank,
                world_size=self.world_size,
                balance_mode=self.balance_mode,
            )
            if self.recorder is not None:
                self.recorder.record(balanced, mask, layer=layer)
            destination = torch.div(balanced.reshape(-1), self.slots, rounding_mode="floor")
            sent = torch.zeros(self.world_size, dtype=torch.int32, device=ids.device)
            received.append(sent.index_add_(0, destination, mask.reshape(-1).to(torch.int32)))
        return torch.stack(received)


def routing(args, step, rank, device):
    """(L, BS, K) top-K ids and descending scores; every rank samples its own tokens from the same
    drifting popularity (1 / rank**skew, the hot experts moved by 5 ids per drift period)."""
    ids, scales = [], []
    for layer in range(args.layers):
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + (step * args.layers + layer) * 1009 + rank)
        order = (torch.arange(args.experts) + 5 * (step // args.drift_every) + 7 * layer) % args.experts
        popularity = torch.empty(args.experts, dtype=torch.float64)
        popularity[order] = torch.arange(1, args.experts + 1, dtype=torch.float64) ** -args.skew
        picks = torch.multinomial(popularity.expand(args.tokens, -1), args.top_k, generator=gen)
        ids.append(picks)
        scales.append(torch.rand(args.tokens, args.top_k, generator=gen).sort(1, descending=True).values)
    return torch.stack(ids).to(device), torch.stack(scales).to(device)


def step_balancedness(received):
    """Model balancedness of one step: sum over layers of the mean rank load / sum of the max."""
    loads = received.double()
    return float(loads.mean(1).sum() / loads.max(1).values.sum())


def rebalance(args, stable, recorder, world_size, step):
    load = recorder.window_load()
    dist.all_reduce(load)
    load = load.cpu().numpy()
    logical = logical_load(load, stable.tensor)
    candidate = plan_model(
        logical,
        num_ranks=world_size,
        slots_per_rank=stable.slots_per_rank,
        balance_mode=args.balance_mode,
        previous=stable.tensor,  # keeps F, and the replicas that need not move
    ).eplb_tables
    gain = rebalance_gain(
        load,
        stable.tensor,
        candidate,
        world_size,
        balance_mode=args.balance_mode,
        min_gain=args.min_gain,
        bytes_per_expert=args.bytes_per_expert,
    )
    entry = {"step": step, **gain.to_dict(), "applied": gain.worth}
    if gain.worth:
        stable.update(candidate)  # validated, checked identical on every rank, written in place
        recorder.reset()  # recorded ids are the old table's physical ids
    return entry


def recorder_cost(args, copies, device):
    """Seconds per step: compiled step with and without the recorder, and the host alternative
    (the op's outputs to the host, a masked bincount per layer)."""
    ids, scales = routing(args, 0, 0, device)
    stable, _, model, with_recorder, _ = copies["rebalanced"]
    without_recorder = copies["static"][3]
    outputs = [
        torch.ops.npu.npu_moe_update_expert(
            ids[layer],
            stable.tensor[layer],
            expert_scales=scales[layer],
            pruning_threshold=model.threshold,
            local_rank_id=model.rank,
            world_size=model.world_size,
            balance_mode=model.balance_mode,
        )
        for layer in range(args.layers)
    ]

    def host_bincount():
        for balanced, mask in outputs:
            torch.bincount(balanced.cpu()[mask.cpu()], minlength=stable.physical_experts)

    def timed(fn, repeats=args.timing_repeats):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    return {
        "step_with_recorder_s": timed(lambda: with_recorder(ids, scales)),
        "step_without_recorder_s": timed(lambda: without_recorder(ids, scales)),
        "host_bincount_s": timed(host_bincount),
    }


def compile_backend(args):
    if args.backend != "torchair":
        return args.backend
    from torchair_plugin.testing import import_torchair  # plain `import torchair` where CANN is installed

    torchair = import_torchair()
    config = torchair.CompilerConfig()
    config.experimental_config.frozen_parameter = True
    config.debug.run_eagerly = args.run_eagerly
    return torchair.get_npu_backend(compiler_config=config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rebalance-every", type=int, default=50)
    parser.add_argument("--drift-every", type=int, default=120)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--redundant-per-rank", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per rank per step (BS)")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--skew", type=float, default=1.2)
    parser.add_argument("--balance-mode", type=int, default=1, choices=(0, 1))
    parser.add_argument("--min-gain", type=float, default=0.02)
    parser.add_argument("--bytes-per-expert", type=int, default=3 * 7168 * 2048 * 2, help="DeepSeek-V3 bf16")
    parser.add_argument("--backend", default="aot_eager", help="a torch.compile backend, or torchair (GE)")
    parser.add_argument("--run-eagerly", action="store_true", help="with --backend torchair: lower, then run FX")
    parser.add_argument("--timing-repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--png")
    args = parser.parse_args()

    try:
        import torch_npu  # noqa: F401

        device, backend = ("npu", "hccl") if torch.npu.is_available() else ("cpu", "gloo")
    except ImportError:
        device, backend = "cpu", "gloo"
    dist.init_process_group(backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    slots = -(-args.experts // world_size) + args.redundant_per_rank
    # The first table knows nothing of the load: expert e's extra replicas round robin.
    first = table_from_phy2log([[e % args.experts for e in range(world_size * slots)]] * args.layers, world_size)
    threshold = torch.full((args.top_k,), 0.1, device=device)

    copies = {}
    for name, rebalanced in (("rebalanced", True), ("static", False)):
        stable = StableEplbTable(first, world_size, balance_mode=args.balance_mode, device=device)
        recorder = (
            ExpertLoadRecorder(
                stable.physical_experts, num_layers=args.layers, window=args.rebalance_every, device=device
            )
            if rebalanced
            else None
        )
        model = TinyMoERouter(stable.tensor, recorder, rank, world_size, args.balance_mode, threshold)
        counter = CompileCounterWithBackend(compile_backend(args))
        copies[name] = (stable, recorder, model, torch.compile(model, backend=counter, fullgraph=True), counter)

    pointer = copies["rebalanced"][0].tensor.data_ptr()
    history = {name: [] for name in copies}
    rebalances = []
    for step in range(args.steps):
        ids, scales = routing(args, step, rank, device)
        for name, (_, recorder, _, compiled, _) in copies.items():
            received = compiled(ids, scales)
            dist.all_reduce(received)
            history[name].append(step_balancedness(received))
            if recorder is not None:
                recorder.step()
        if (step + 1) % args.rebalance_every == 0 and step + 1 < args.steps:
            stable, recorder = copies["rebalanced"][:2]
            rebalances.append(rebalance(args, stable, recorder, world_size, step + 1))
    assert copies["rebalanced"][0].tensor.data_ptr() == pointer

    compiles = torch.tensor([copies[name][4].frame_count for name in copies])
    every_rank = [torch.zeros_like(compiles) for _ in range(world_size)]
    dist.all_gather(every_rank, compiles)
    cost = recorder_cost(args, copies, device)
    if rank == 0:
        report(args, world_size, history, rebalances, every_rank, cost)
    dist.destroy_process_group()


def report(args, world_size, history, rebalances, every_rank, cost):
    mean = {name: sum(values) / len(values) for name, values in history.items()}
    result = {
        "world_size": world_size,
        "steps": args.steps,
        "balance_mode": args.balance_mode,
        "balancedness_per_step": history,
        "mean_balancedness": mean,
        "compiles_per_rank": {name: [int(c[i]) for c in every_rank] for i, name in enumerate(history)},
        "rebalances": rebalances,
        "recorder_cost": cost,
    }
    print(
        f"mean balancedness over {args.steps} steps: rebalanced {mean['rebalanced']:.3f}, static {mean['static']:.3f}"
    )
    print(f"compiles per rank: {result['compiles_per_rank']}")
    for entry in rebalances:
        print(
            f"step {entry['step']}: balancedness {entry['model_balancedness_now']:.3f} -> predicted "
            f"{entry['model_balancedness_predicted']:.3f}, replicas moved {sum(entry['replicas_moved'])} "
            f"({'applied' if entry['applied'] else 'skipped'})"
        )
    print(
        "per step: compiled with recorder {:.1f} us, without {:.1f} us, host bincount {:.1f} us".format(
            cost["step_with_recorder_s"] * 1e6, cost["step_without_recorder_s"] * 1e6, cost["host_bincount_s"] * 1e6
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    if args.png:
        plot(result, args.png)


def plot(result, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for name, values in result["balancedness_per_step"].items():
        axes.plot(
            range(1, len(values) + 1),
            values,
            linewidth=1.2,
            label=f"{name} (mean {result['mean_balancedness'][name]:.3f})",
        )
    for entry in result["rebalances"]:
        moved = sum(entry["replicas_moved"])
        axes.axvline(entry["step"], color="gray", linestyle=":" if entry["applied"] else "-.", linewidth=1)
        axes.annotate(
            f"{moved if entry['applied'] else 'skip'}",
            (entry["step"], 0.02),
            fontsize=8,
            xycoords=("data", "axes fraction"),
        )
    axes.set(
        xlabel="step",
        ylabel="balancedness (mean / max rank load)",
        ylim=(0, 1.05),
        title=f"EPLB loop, {result['world_size']} ranks, balance_mode {result['balance_mode']}: "
        "rebalances dotted, replicas moved at the bottom",
    )
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.savefig(path, metadata={"Software": None})


if __name__ == "__main__":
    main()
