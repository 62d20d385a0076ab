"""Planner vs the common greedy: balancedness (mean / max rank load) and planning time.

    PYTHONPATH=. python bench/bench_planner.py [--json bench/results/planner.json]

Loads proportional to 1/i**s over 256 experts, 32 ranks, 9 slots per rank (a DeepSeek-like layer),
for both balance modes, each plan judged under the op's real split for that mode. The greedy is
the tests' baseline (tests/eplb_greedy.py), run in the same process.
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
from eplb_greedy import greedy_table  # noqa: E402
from torchair_plugin.eplb import balancedness, expected_loads, plan_placement  # noqa: E402


def _judge(table, load, num_ranks, mode):
    return balancedness(expected_loads(table, load, num_ranks, mode).reshape(num_ranks, -1).sum(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--ranks", type=int, default=32)
    parser.add_argument("--slots-per-rank", type=int, default=9)
    parser.add_argument("--skews", type=float, nargs="+", default=[0.8, 1.0, 1.2, 1.5, 2.0])
    parser.add_argument("--json", default="bench/results/planner.json")
    args = parser.parse_args()

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
            rows.append({"balance_mode": mode, "skew": skew, "greedy": greedy, "planner": ours, "plan_seconds": elapsed})
            print(f"{mode:>4} {skew:>5} {greedy:>8.4f} {ours:>8.4f} {elapsed * 1e3:>8.1f}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"experts": args.experts, "ranks": args.ranks, "slots_per_rank": args.slots_per_rank,
                       "results": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
