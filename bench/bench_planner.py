"""Planners compared: balancedness (mean / max rank load), planning time, replicas moved.

    PYTHONPATH=. python bench/bench_planner.py [--json bench/results/planner.json]

One thread. Every plan is judged under the op's real split for its balance mode by
``expected_loads`` (not by the planner's own figures). Three parts:
1. one layer, loads 1/i**s over 256 experts, 32 ranks x 9 slots: the greedy (tests/eplb_greedy.py)
   vs ``plan_placement``;
2. a whole model, 58 such layers, loads 1/i**s shuffled per layer: the DeepSeek-style baseline
   (bench/deepseek_style_eplb.py), ``plan_placement`` layer by layer, and ``plan_model``; the
   last column is plan_model's worst layer against the greedy (>= 0: never below it);
3. a drifting workload, 20 rebalances: each time 8 of the 32 hottest popularity places swap
   with one 1-3 places away; ``plan_model(previous=...)`` vs planning from scratch each time:
   slots whose expert changed (weight copies), and balancedness. Also printed, for both: the
   replicas new on their rank, the copies a plan would need if every replica that stays on its
   rank kept its slot there (the from-scratch plan lists a rank's experts in id order, so one new
   id shifts the slots after it).
4. the same drift with every load measured +-5% (``--noise``), as real load counters are: the
   counts mostly fit and a few ranks go over, where part 3 mostly changes counts.
"""

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import torchair_plugin  # noqa: E402,F401
import torch  # noqa: E402
from deepseek_style_eplb import rebalance_global  # noqa: E402
from eplb_greedy import greedy_table  # noqa: E402
from torchair_plugin.eplb import (  # noqa: E402
    balancedness,
    expected_loads,
    plan_model,
    plan_placement,
    table_from_phy2log,
)


def _judge(table, load, num_ranks, mode):
    return balancedness(expected_loads(table, load, num_ranks, mode).reshape(num_ranks, -1).sum(1))


def _judge_layers(tables, loads, num_ranks, mode):
    return np.array([_judge(table, load, num_ranks, mode) for table, load in zip(tables, loads)])


def _timed(function):
    """(result, CPU seconds): on a shared machine wall time measures the neighbours too."""
    start, wall = time.process_time(), time.perf_counter()
    result = function()
    _timed.wall = time.perf_counter() - wall
    return result, time.process_time() - start


def _layer_loads(num_layers, num_experts, skew, seed=0):
    rng = np.random.default_rng(seed)
    base = 1.0 / np.arange(1, num_experts + 1) ** skew
    return np.stack([rng.permutation(base) for _ in range(num_layers)])


def whole_model(args):
    """Part 2: rows of (s, mode, baseline/per-layer/plan_model time and mean balancedness)."""
    rows = []
    ranks, slots = args.ranks, args.slots_per_rank
    print(
        f"\nwhole model: {args.layers} layers x {args.experts} experts, {ranks} ranks x {slots} slots "
        f"(mean balancedness over layers; seconds for all layers)"
    )
    print(
        "times: CPU seconds of this process (the machine is shared; wall time in the JSON); deepseek: "
        "torch loop, and [the same loop on lists]"
    )
    print(
        f"{'s':>4} {'mode':>4} {'deepseek s':>16} {'bal':>7} {'per-layer s':>11} {'bal':>7} "
        f"{'plan_model s':>12} {'bal':>7} {'min vs greedy':>13}"
    )
    for skew in args.model_skews:
        loads = _layer_loads(args.layers, args.experts, skew)
        phy2log, deepseek_s = _timed(lambda: rebalance_global(torch.from_numpy(loads), ranks * slots, ranks))
        deepseek_wall = _timed.wall
        lists_phy2log, lists_s = _timed(
            lambda: rebalance_global(torch.from_numpy(loads), ranks * slots, ranks, lists=True)
        )
        assert torch.equal(lists_phy2log, phy2log)
        deepseek_tables = table_from_phy2log(phy2log, ranks, num_logical=args.experts, balance_mode=1)
        greedy = [greedy_table(load, ranks, slots) for load in loads]
        for mode in (1, 0):
            deepseek = _judge_layers(deepseek_tables, loads, ranks, mode)
            per_layer, per_layer_s = _timed(
                lambda: [plan_placement(load, ranks, slots, balance_mode=mode).eplb_table for load in loads]
            )
            per_layer_wall = _timed.wall
            plan, model_s = _timed(lambda: plan_model(loads, num_ranks=ranks, slots_per_rank=slots, balance_mode=mode))
            ours = _judge_layers(plan.eplb_tables, loads, ranks, mode)
            versus_greedy = float((ours - _judge_layers(greedy, loads, ranks, mode)).min())
            row = {
                "skew": skew,
                "balance_mode": mode,
                "deepseek_seconds": deepseek_s,
                "deepseek_wall": deepseek_wall,
                "deepseek_lists_seconds": lists_s,
                "deepseek": deepseek.mean(),
                "per_layer_seconds": per_layer_s,
                "per_layer_wall": per_layer_wall,
                "per_layer": _judge_layers(per_layer, loads, ranks, mode).mean(),
                "plan_model_seconds": model_s,
                "plan_model_wall": _timed.wall,
                "plan_model": ours.mean(),
                "min_vs_greedy": versus_greedy,
            }
            rows.append(row)
            both = f"{deepseek_s:.3f} [{lists_s:.3f}]"
            print(
                f"{skew:>4} {mode:>4} {both:>16} {row['deepseek']:>7.4f} {per_layer_s:>11.3f} "
                f"{row['per_layer']:>7.4f} {model_s:>12.3f} {row['plan_model']:>7.4f} {versus_greedy:>13.4f}"
            )
    return rows


def _new_on_rank(before, after, num_ranks):
    """Replicas of ``after`` (L, P phy2log) that ``before`` does not have on the same rank: the
    weight copies ``after`` needs when a replica that stays on its rank keeps its slot."""
    shape = (before.shape[0], num_ranks, -1)
    old, new = np.asarray(before).reshape(shape), np.asarray(after).reshape(shape)
    return int((~(new[..., :, None] == old[..., None, :]).any(-1)).sum())


def _drift(order, rng, hot=32, swaps=8):
    """Popularity order (L, E) -> the next: ``swaps`` of the ``hot`` first places per layer trade
    with a place 1-3 further on."""
    order = order.copy()
    for row in order:
        for _ in range(swaps):
            i = int(rng.integers(0, hot))
            j = min(row.shape[0] - 1, i + int(rng.integers(1, 4)))
            row[i], row[j] = row[j], row[i]
    return order


def drifting(args, noise=0.0):
    """Parts 3 and 4: per rebalance, moves and balancedness of move-aware and from-scratch plans;
    with ``noise``, every measured load is off by a uniform factor in [1 - noise, 1 + noise]."""
    ranks, slots, mode = args.ranks, args.slots_per_rank, args.drift_mode
    rng = np.random.default_rng(1)
    measure = np.random.default_rng(2)
    base = 1.0 / np.arange(1, args.experts + 1) ** args.drift_skew
    order = np.stack([rng.permutation(args.experts) for _ in range(args.layers)])

    def loads_of(order):
        loads = np.empty(order.shape)
        np.put_along_axis(loads, order, np.broadcast_to(base, order.shape), 1)
        return loads

    start = plan_model(loads_of(order), num_ranks=ranks, slots_per_rank=slots, balance_mode=mode)
    aware, scratch = start, start
    measured = f", loads measured +-{noise:.0%}" if noise else ""
    print(
        f"\ndrifting workload{measured}: s = {args.drift_skew}, balance_mode {mode}, {args.rebalances} rebalances "
        f"({args.layers * ranks * slots} slots in the model); moves = slots whose expert changed"
    )
    print(
        f"{'t':>3} {'aware moves':>11} {'bal':>7} {'worst loss':>10} {'s':>6} {'scratch moves':>13} {'bal':>7} {'s':>6}"
    )
    rows = []
    for step in range(1, args.rebalances + 1):
        order = _drift(order, rng)
        loads = loads_of(order)
        if noise:
            loads = loads * measure.uniform(1 - noise, 1 + noise, loads.shape)
        new_aware, aware_s = _timed(
            lambda: plan_model(
                loads, num_ranks=ranks, slots_per_rank=slots, balance_mode=mode, previous=aware.eplb_tables
            )
        )
        new_scratch, scratch_s = _timed(
            lambda: plan_model(loads, num_ranks=ranks, slots_per_rank=slots, balance_mode=mode)
        )
        aware_bal = _judge_layers(new_aware.eplb_tables, loads, ranks, mode)
        scratch_bal = _judge_layers(new_scratch.eplb_tables, loads, ranks, mode)
        # The bound is against a from-scratch plan with the F the move-aware tables keep (noisy
        # loads can want more replicas of a hot expert than the previous F allows).
        columns = new_aware.eplb_tables.shape[2]
        same_f = new_scratch
        if new_scratch.eplb_tables.shape[2] != columns:
            same_f = plan_model(loads, num_ranks=ranks, slots_per_rank=slots, balance_mode=mode, num_columns=columns)
        bound_bal = _judge_layers(same_f.eplb_tables, loads, ranks, mode)
        row = {
            "noise": noise,
            "step": step,
            "aware_moves": int((new_aware.phy2log != aware.phy2log).sum()),
            "aware": aware_bal.mean(),
            "worst_loss": float((bound_bal - aware_bal).max()),
            "aware_seconds": aware_s,
            "scratch_moves": int((new_scratch.phy2log != scratch.phy2log).sum()),
            "aware_new_on_rank": _new_on_rank(aware.phy2log, new_aware.phy2log, ranks),
            "scratch_new_on_rank": _new_on_rank(scratch.phy2log, new_scratch.phy2log, ranks),
            "scratch": scratch_bal.mean(),
            "scratch_seconds": scratch_s,
        }
        rows.append(row)
        print(
            f"{step:>3} {row['aware_moves']:>11} {row['aware']:>7.4f} {row['worst_loss']:>10.4f} {aware_s:>6.2f} "
            f"{row['scratch_moves']:>13} {row['scratch']:>7.4f} {scratch_s:>6.2f}"
        )
        aware, scratch = new_aware, new_scratch
    aware_moves = np.mean([r["aware_moves"] for r in rows])
    scratch_moves = np.mean([r["scratch_moves"] for r in rows])
    print(
        f"mean moves per rebalance: move-aware {aware_moves:.1f}, from scratch {scratch_moves:.1f} "
        f"(ratio {aware_moves / scratch_moves:.3f}); worst layer loss vs scratch with the same F "
        f"{max(r['worst_loss'] for r in rows):.4f} (bound {args.max_loss})"
    )
    aware_new = np.mean([r["aware_new_on_rank"] for r in rows])
    scratch_new = np.mean([r["scratch_new_on_rank"] for r in rows])
    print(
        f"replicas new on their rank per rebalance (slots kept within a rank): move-aware {aware_new:.1f}, "
        f"from scratch {scratch_new:.1f} (ratio {aware_new / scratch_new:.3f})"
    )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--ranks", type=int, default=32)
    parser.add_argument("--slots-per-rank", type=int, default=9)
    parser.add_argument("--skews", type=float, nargs="+", default=[0.8, 1.0, 1.2, 1.5, 2.0])
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--model-skews", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--rebalances", type=int, default=20)
    parser.add_argument("--drift-skew", type=float, default=1.2)
    parser.add_argument("--drift-mode", type=int, choices=(0, 1), default=1)
    parser.add_argument("--noise", type=float, default=0.05, help="part 4: measurement noise on the drift")
    parser.add_argument("--max-loss", type=float, default=0.002, help="plan_model's default bound")
    parser.add_argument("--json", default="bench/results/planner.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    print(f"{args.experts} experts, {args.ranks} ranks, {args.slots_per_rank} slots per rank")
    print(f"{'mode':>4} {'s':>5} {'greedy':>8} {'planner':>8} {'plan ms':>8}")
    for mode in (1, 0):
        for skew in args.skews:
            load = 1.0 / np.arange(1, args.experts + 1) ** skew
            greedy = _judge(greedy_table(load, args.ranks, args.slots_per_rank), load, args.ranks, mode)
            start = time.perf_counter()
            plan = plan_placement(load, args.ranks, args.slots_per_rank, balance_mode=mode)
            elapsed = time.perf_counter() - start
            ours = _judge(plan.eplb_table, load, args.ranks, mode)
            rows.append(
                {"balance_mode": mode, "skew": skew, "greedy": greedy, "planner": ours, "plan_seconds": elapsed}
            )
            print(f"{mode:>4} {skew:>5} {greedy:>8.4f} {ours:>8.4f} {elapsed * 1e3:>8.1f}")
    model_rows = whole_model(args)
    drift_rows = drifting(args) + drifting(args, args.noise)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "experts": args.experts,
                    "ranks": args.ranks,
                    "slots_per_rank": args.slots_per_rank,
                    "results": rows,
                    "whole_model": model_rows,
                    "drift": drift_rows,
                },
                f,
                indent=1,
                default=float,
            )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
