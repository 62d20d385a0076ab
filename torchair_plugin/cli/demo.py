"""``demo``: the op's whole job on an embedded, seeded example; no files, no NPU.

1. a MoE routing batch per source rank with skewed expert popularity (``eplb.skewed_routing``);
2. an eplb_table with redundant experts planned from its load (``eplb.plan_placement``);
3. the op run eagerly on one rank's batch: logical -> physical mapping and pruning, rows shown;
4. the tokens every rank receives without redundancy, with balance_mode 0 and 1 (``eplb.load_report``);
5. the update -> dispatch -> combine step captured as a GE graph, where capture is possible
   (:func:`capture_chain`).
Progress lines go to stderr so that ``--json`` output on stdout stays one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    import torch

from torchair_plugin import limits
from torchair_plugin.cli import EXIT_BAD_INPUT, EXIT_OK
from torchair_plugin.cli._args import finite_float_at_least, int_in

PRUNING_THRESHOLD = 0.08  # drop an expert whose weight is below 8% of the token's total
INACTIVE_FRACTION = 4  # the last 1/4 of the batch are padding rows (active_mask False)


@dataclass(frozen=True)
class DemoBatch:
    """The op's inputs for one source rank, as a serving engine would pass them."""

    expert_ids: "torch.Tensor"  # (BS, K) int64 logical ids
    expert_scales: "torch.Tensor"  # (BS, K) float32, descending per row
    pruning_threshold: "torch.Tensor"  # (K,) float32
    active_mask: "torch.Tensor"  # (BS,) bool, True rows first
    local_rank_id: int
    world_size: int
    balance_mode: int


class _Progress:
    """``[i/n] step ... 0.12 s`` lines on stderr, so a user sees what a slow step is doing."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done = total, quiet, 0
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        self.done += 1
        if not self.quiet:
            print(f"[{self.done}/{self.total}] {name} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if not self.quiet:
            print(f" {self.seconds[name]:.2f} s", file=sys.stderr, flush=True)


def make_batch(routing, rank: int, world_size: int, balance_mode: int, seed: int) -> DemoBatch:
    """Rank ``rank``'s first (at most 512) tokens, with seeded gating weights and padding rows."""
    import torch

    expert_ids = routing[rank, : limits.MAX_BS]
    bs, k = expert_ids.shape
    generator = torch.Generator().manual_seed(seed + 1)  # not the routing's stream
    logits = torch.randn(bs, k, generator=generator) * 1.5
    scales = torch.softmax(logits, dim=1).sort(dim=1, descending=True).values  # top-K weights come sorted
    active = torch.arange(bs) < bs - bs // INACTIVE_FRACTION
    return DemoBatch(
        expert_ids=expert_ids,
        expert_scales=scales,
        pruning_threshold=torch.full((k,), PRUNING_THRESHOLD),
        active_mask=active,
        local_rank_id=rank,
        world_size=world_size,
        balance_mode=balance_mode,
    )


def shown_rows(bs: int, rows: int) -> List[int]:
    """The first ``rows`` rows and the last one (a padding row, to show active_mask at work)."""
    return sorted(set(range(min(rows, bs))) | {bs - 1})


def capture_chain(batch: DemoBatch, eplb_table) -> Dict[str, Any]:
    """The GE graph of update_expert -> dispatch_v2 -> combine_v2 at this batch's shapes and attrs.

    torchair's real FX -> GE lowering through :mod:`torchair_plugin.testing` (CANN-less where there
    is no CANN). Returns ``available`` and either the summary lines or the reason it cannot run.
    """
    from torchair_plugin.schema import OPTIONAL_INPUTS
    from torchair_plugin.testing import CannLessUnavailable
    from torchair_plugin.testing.lowering import LowerSpec, lower

    bs, k = batch.expert_ids.shape
    spec = LowerSpec(
        bs=int(bs),
        k=int(k),
        experts=int(eplb_table.shape[0]),
        f=int(eplb_table.shape[1]),
        world_size=batch.world_size,
        rank=batch.local_rank_id,
        balance_mode=batch.balance_mode,
        optional=OPTIONAL_INPUTS,
        ids_dtype=str(batch.expert_ids.dtype).replace("torch.", ""),
        chain=True,
        # dispatch's moe_expert_num is the number of physical experts the planned table places
        physical_experts=int(eplb_table[:, 0].sum()),
    )
    try:
        graph = lower(spec)
    except CannLessUnavailable as exc:
        return {"available": False, "reason": f"capture is not possible here: {exc}"}
    from torchair_plugin.testing import current_mode, describe_capture

    types = graph.op_types()
    update = graph.ops_of_type("MoeUpdateExpert")[0].name
    dispatch = graph.ops_of_type("MoeDistributeDispatchV2")[0]
    fed = {i.name: i.source for i in dispatch.inputs if i.source.startswith(update)}
    summary = [
        f"one GE graph of {len(types)} ops: Data x{types.count('Data')}, " + ", ".join(t for t in types if t != "Data"),
        "dispatch_v2 inputs fed by the op: " + ", ".join(f"{name} <- {src}" for name, src in sorted(fed.items())),
        f"captured with: {describe_capture()}",
        "see it all: torchair-plugin lower --chain (--format pbtxt for Ascend graph viewers)",
    ]
    return {
        "available": True,
        "summary": summary,
        "op_types": types,
        "dispatch_inputs_from_update": fed,
        "mode": current_mode().value,
    }


def _format_row(row: int, batch: DemoBatch, physical, mask) -> str:
    logical = " ".join(f"{v:>3}" for v in batch.expert_ids[row].tolist())
    mapped = " ".join(f"{v:>3}" for v in physical[row].tolist())
    kept = "".join("1" if v else "." for v in mask[row].tolist())
    weights = " ".join(f"{v:.2f}" for v in batch.expert_scales[row].tolist())
    state = "active " if bool(batch.active_mask[row]) else "padding"
    return f"  row {row:>3} {state}  logical [{logical}] -> physical [{mapped}]  kept {kept}  weights {weights}"


def add_demo_subcommand(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="the op's job end to end on a seeded example: routing, EPLB table, mapping and pruning, rank loads",
        description="Generate a seeded MoE routing batch with skewed expert popularity, plan an eplb_table with "
        "redundant experts for it, run npu_moe_update_expert eagerly on one rank's batch (mapping and pruning, "
        "a few rows shown), and report the tokens every rank receives without redundancy and with "
        "balance_mode 0 and 1. Needs no files and no NPU.",
    )
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed of everything generated (default 0)")
    parser.add_argument("--world-size", type=int_in(limits.MIN_WORLD_SIZE, 64), default=8, help="ranks (default 8)")
    parser.add_argument("--experts", type=int_in(1, 512), default=64, help="logical experts (default 64)")
    parser.add_argument("--top-k", type=int_in(1, limits.MAX_K), default=8, help="experts per token (default 8)")
    parser.add_argument("--tokens-per-rank", type=int_in(1, 4096), default=256, help="tokens per rank (default 256)")
    parser.add_argument(
        "--skew", type=finite_float_at_least(0.0), default=1.2, help="expert popularity ~ 1/i**skew (default 1.2)"
    )
    parser.add_argument(
        "--redundant-slots-per-rank",
        type=int_in(0, 64),
        default=2,
        help="physical slots per rank beyond experts / world_size, for replicas (default 2)",
    )
    parser.add_argument(
        "--balance-mode",
        type=int,
        choices=limits.BALANCE_MODES,
        default=1,
        help="balance_mode the table is planned for and the op is shown with (default 1)",
    )
    parser.add_argument("--rank", type=int_in(0, 63), default=1, help="source rank whose batch is shown (default 1)")
    parser.add_argument(
        "--rows", type=int_in(1, limits.MAX_BS), default=4, help="rows of the op's output shown (default 4)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run_demo)
    return parser


def _usage_problem(args) -> Optional[str]:
    """What no single option's range can express."""
    if args.top_k > args.experts:
        return f"--top-k {args.top_k} must be <= --experts {args.experts}"
    if args.rank >= args.world_size:
        return f"--rank {args.rank} must be < --world-size {args.world_size}"
    slots = -(-args.experts // args.world_size) + args.redundant_slots_per_rank
    physical = slots * args.world_size
    if physical > min(limits.MAX_EXPERTS, args.experts * args.world_size):
        return (
            f"{args.world_size} ranks x {slots} slots = {physical} physical experts exceeds "
            f"min({limits.MAX_EXPERTS}, experts x world_size = {args.experts * args.world_size}); "
            "lower --redundant-slots-per-rank"
        )
    return None


def run_demo(args) -> int:
    problem = _usage_problem(args)
    if problem is not None:
        print(f"demo: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from torchair_plugin.eplb import expert_load, format_report, load_report, plan_placement, skewed_routing

    progress = _Progress(total=5, quiet=args.quiet or args.json)
    ws = args.world_size
    with progress.step(f"routing {args.tokens_per_rank} tokens x top-{args.top_k} on {ws} ranks (skew {args.skew})"):
        routing = skewed_routing(args.experts, ws, args.tokens_per_rank, args.top_k, args.skew, args.seed)
    with progress.step(f"planning an eplb_table for balance_mode {args.balance_mode}"):
        slots = -(-args.experts // ws) + args.redundant_slots_per_rank
        load = expert_load(routing, args.experts, per_source=args.balance_mode == 0)
        plan = plan_placement(load, ws, slots, balance_mode=args.balance_mode)
    table = plan.eplb_table
    with progress.step(f"npu_moe_update_expert on rank {args.rank}'s batch"):
        batch = make_batch(routing, args.rank, ws, args.balance_mode, args.seed)
        physical, mask = _call_op(batch, table)
    with progress.step("tokens per rank through the op, rank by rank"):
        report = load_report(routing, table, ws)
    with progress.step("GE graph of update -> dispatch -> combine"):
        capture = capture_chain(batch, table)

    rows = shown_rows(batch.expert_ids.shape[0], args.rows)
    counts = plan.counts
    replicated = [(int(e), int(counts[e])) for e in counts.argsort(kind="stable")[::-1] if counts[e] > 1]
    active_pairs = mask.shape[1] * int(batch.active_mask.sum())
    imbalance = {s.name: round(s.imbalance, 4) for s in report.scenarios}
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "json", "quiet", "command")},
        "table": {
            "moe_expert_num": int(table.shape[0]),
            "physical_experts": int(counts.sum()),
            "slots_per_rank": slots,
            "F": int(table.shape[1]),
            "replicated": replicated,
            "modelled_balancedness": round(plan.balancedness, 4),
            "eplb_table": table.tolist(),
        },
        "op": {
            "local_rank_id": batch.local_rank_id,
            "world_size": ws,
            "balance_mode": batch.balance_mode,
            "pruning_threshold": PRUNING_THRESHOLD,
            "bs": int(batch.expert_ids.shape[0]),
            "kept": int(mask.sum()),
            "active_pairs": active_pairs,
            "rows": [
                {
                    "row": r,
                    "active": bool(batch.active_mask[r]),
                    "expert_ids": batch.expert_ids[r].tolist(),
                    "expert_scales": [round(v, 4) for v in batch.expert_scales[r].tolist()],
                    "balanced_expert_ids": physical[r].tolist(),
                    "balanced_active_mask": mask[r].tolist(),
                }
                for r in rows
            ],
        },
        "load": report.to_dict(),
        "imbalance": imbalance,
        "capture": capture,
        "seconds": progress.seconds,
    }
    if args.json:
        print(json.dumps(result))
        return EXIT_OK

    print(
        f"eplb_table: {table.shape[0]} logical experts on {int(counts.sum())} physical slots "
        f"({ws} ranks x {slots}), F = {table.shape[1]}"
    )
    print(
        "  replicated experts (id x replicas): "
        + ", ".join(f"{e} x{c}" for e, c in replicated[:12])
        + (" ..." if len(replicated) > 12 else "")
    )
    for e, _ in replicated[:3]:
        print(f"  eplb_table[{e}] = {table[e].tolist()}")
    print()
    print(
        f"npu_moe_update_expert(rank {batch.local_rank_id} of {ws}, balance_mode {batch.balance_mode}, "
        f"pruning_threshold {PRUNING_THRESHOLD}): BS {batch.expert_ids.shape[0]}, K {args.top_k}"
    )
    for r in rows:
        print(_format_row(r, batch, physical, mask))
    print(f"  kept {int(mask.sum())} of {active_pairs} (token, expert) pairs of active rows; padding rows keep none")
    print()
    print(format_report(report))
    print()
    print("max/mean rank load: " + ", ".join(f"{name} {value:.3f}" for name, value in imbalance.items()))
    print()
    if capture["available"]:
        print(
            "GE graph of update -> dispatch_v2 -> combine_v2, compiled with torchair's npu_backend "
            "(its real FX -> GE lowering, no NPU needed):"
        )
        print("\n".join("  " + line for line in capture["summary"]))
    else:
        print(f"GE graph of update -> dispatch -> combine: {capture['reason']}")
    return EXIT_OK


def _call_op(batch: DemoBatch, eplb_table):
    import torchair_plugin

    return torchair_plugin.npu_moe_update_expert(
        batch.expert_ids,
        eplb_table,
        expert_scales=batch.expert_scales,
        pruning_threshold=batch.pruning_threshold,
        active_mask=batch.active_mask,
        local_rank_id=batch.local_rank_id,
        world_size=batch.world_size,
        balance_mode=batch.balance_mode,
    )
