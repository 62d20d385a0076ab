"""``balance --loads``: plan a whole model from a per-layer load file and say what it changes.

Before: the ``--previous`` tables under the new loads, else no redundancy (one copy of each
expert, E / world_size consecutive experts per rank). After: ``plan_model``'s tables. Both are
judged by ``expected_loads`` (the op's split for ``--plan-mode``), per layer and for the whole
model (the mean over layers), with the slots whose expert changed and the time the plan took.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from torchair_plugin.eplb.io import in_file, load_eplb_table, load_layer_loads
from torchair_plugin.eplb.load_report import physical_ranks
from torchair_plugin.eplb.model_planner import plan_model
from torchair_plugin.eplb.planner import balancedness, expected_loads


def add_model_arguments(parser) -> None:
    group = parser.add_argument_group("whole model (--loads)")
    group.add_argument(
        "--loads",
        metavar="PATH",
        help="per-layer loads (L, E) (.pt, .npy, .json; a dict's "
        "'loads' entry): plan every layer with plan_model instead of the routing report",
    )
    group.add_argument(
        "--previous",
        metavar="PATH",
        help="the tables (L, E, F) in use: the plan moves few replicas from them, and 'before' is theirs",
    )
    group.add_argument(
        "--max-loss",
        type=float,
        default=0.002,
        help="move-aware bound on the balancedness lost against a from-scratch plan (default 0.002)",
    )
    group.add_argument("--ranks-per-node", type=int, help="spread each expert's replicas over nodes of this many ranks")
    group.add_argument("--out", metavar="PATH", help="write the planned tables (L, E, F) here (.pt or .npy)")


def _judge(tables: torch.Tensor, loads: np.ndarray, world_size: int, mode: int) -> np.ndarray:
    """(L,) balancedness of each layer's table under the op's split."""
    slots = int(tables[0, :, 0].sum()) // world_size
    return np.array(
        [
            balancedness(expected_loads(table, load, world_size, mode).reshape(world_size, slots).sum(1))
            for table, load in zip(tables, loads)
        ]
    )


def _no_redundancy(loads: np.ndarray, world_size: int) -> np.ndarray:
    ranks = physical_ranks(loads.shape[1], world_size)
    return np.array([balancedness(np.bincount(ranks, weights=load, minlength=world_size)) for load in loads])


def _write(path: str, tables: torch.Tensor) -> None:
    if path.endswith(".npy"):
        np.save(path, tables.numpy())
    elif path.endswith(".pt"):
        torch.save(tables, path)
    else:
        raise ValueError(f"--out {path}: use a .pt or .npy file")


def run_model_balance(args, world_size: int) -> dict:
    """Plan, judge and print (text or JSON); returns the JSON-ready result."""
    loads = load_layer_loads(args.loads)
    previous = None
    if args.previous:
        previous = load_eplb_table(args.previous, world_size, balance_mode=args.plan_mode)
        if previous.dim() != 3:
            raise ValueError(
                f"{args.previous}: --previous needs per-layer tables (L, E, F), got shape {tuple(previous.shape)}"
            )
    num_experts = loads.shape[1]
    slots = args.slots_per_rank if args.slots_per_rank is not None else -(-num_experts // world_size) + 2
    start = time.perf_counter()
    with in_file(args.loads):
        plan = plan_model(
            loads,
            num_ranks=world_size,
            slots_per_rank=slots,
            balance_mode=args.plan_mode,
            previous=previous,
            max_loss=args.max_loss,
            ranks_per_node=args.ranks_per_node,
        )
    seconds = time.perf_counter() - start
    if args.out:
        _write(args.out, plan.eplb_tables)
    before = (
        _judge(previous, loads, world_size, args.plan_mode)
        if previous is not None
        else _no_redundancy(loads, world_size)
    )
    after = _judge(plan.eplb_tables, loads, world_size, args.plan_mode)
    result = {
        "layers": int(loads.shape[0]),
        "experts": num_experts,
        "world_size": world_size,
        "slots_per_rank": slots,
        "balance_mode": args.plan_mode,
        "before": "previous tables" if previous is not None else "no redundancy",
        "balancedness_before": before.tolist(),
        "balancedness_after": after.tolist(),
        "model_before": float(before.mean()),
        "model_after": float(after.mean()),
        "moved": plan.moved.tolist() if previous is not None else None,
        "plan_seconds": seconds,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(_format(result))
    return result


def _format(result: dict) -> str:
    moved = result["moved"]
    lines = [
        f"plan_model: {result['layers']} layers x {result['experts']} experts on {result['world_size']} ranks x "
        f"{result['slots_per_rank']} slots, balance_mode {result['balance_mode']}; before = {result['before']}",
        f"{'layer':>6} {'before':>8} {'after':>8}" + (f" {'moved':>6}" if moved is not None else ""),
    ]
    for layer, (b, a) in enumerate(zip(result["balancedness_before"], result["balancedness_after"])):
        lines.append(f"{layer:>6} {b:>8.4f} {a:>8.4f}" + (f" {moved[layer]:>6}" if moved is not None else ""))
    total = result["layers"] * result["world_size"] * result["slots_per_rank"]
    summary = f"{'model':>6} {result['model_before']:>8.4f} {result['model_after']:>8.4f}"
    if moved is not None:
        summary += f" {sum(moved):>6}  ({sum(moved)} of {total} slots moved)"
    lines += [summary, f"plan took {result['plan_seconds']:.3f} s (balancedness = mean / max rank load)"]
    return "\n".join(lines)
