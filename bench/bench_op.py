"""Per-call time of npu_moe_update_expert against its floors and its golden loop, in one run.

Shapes of a large serving layer: BS=512, K=16, moe_expert_num=1024, F=9, world_size=64. Two floors, the
least any implementation must do: mapping, one index_select of BS*K int32 elements from the
flattened table; pruning, the scales widened to float32, one sum over K, one multiply, one
comparison. The full op (mode 1, pruning, active_mask) is reported against their sum. Times are
the best of repeated timer blocks; the machines are noisy, so read the ratios.

"Table changed every call" writes one table entry (the last: the content comparison reads the
whole table before it finds the change) before each call, as an EPLB update would: the kernel
cannot reuse anything it derived from the table. The reference kernel runs the compiled CPU
kernel where one was built; "Python kernel" is the Python path alone. ``--baseline`` also times
the reference kernel of another reference.py with the same cases in the same run, for
before/after ratios:

    git show REV:torchair_plugin/reference.py > /tmp/old_reference.py
    python bench/bench_op.py [--json bench/results/op.json] [--threads 1] [--baseline /tmp/old_reference.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import timeit

import torchair_plugin  # noqa: F401  (first: sets up torch's import on torch-npu machines)
import torch
from torchair_plugin import npu_moe_update_expert as wrapper
from torchair_plugin import _cpu_kernel
from torchair_plugin.reference import npu_moe_update_expert_reference, python_reference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from golden import golden_update_expert  # noqa: E402

BS, K, EXPERTS, F, WORLD = 512, 16, 1024, 9, 64


def make_inputs(device):
    gen = torch.Generator().manual_seed(0)
    table = torch.randint(0, EXPERTS, (EXPERTS, F), generator=gen, dtype=torch.int32)
    table[:, 0] = torch.randint(1, F, (EXPERTS,), generator=gen, dtype=torch.int32)
    ids = torch.randint(0, EXPERTS, (BS, K), generator=gen, dtype=torch.int32)
    scales = torch.rand(BS, K, generator=gen).sort(1, descending=True).values.to(torch.bfloat16)
    threshold = torch.full((K,), 0.5 / K)
    active = torch.arange(BS) < BS - 37
    to = lambda t: t.to(device)  # noqa: E731
    return to(ids), to(table), to(scales), to(threshold), to(active)


def per_call_us(cases, sync, rounds=15, min_block_s=0.02):
    """Best-of time per call of every case, measured round-robin.

    Interleaving the cases (one timed block of each per round) exposes them all to the same
    drift of this shared machine's speed; the minimum over rounds is kept, since noise only ever
    adds time (as timeit's docs advise).
    """
    numbers = {}
    for name, fn in cases.items():
        fn()
        number = 1
        while timeit.timeit(lambda: (fn(), sync()), number=number) < min_block_s:
            number *= 2
        numbers[name] = number
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            elapsed = timeit.timeit(lambda: (fn(), sync()), number=numbers[name])
            best[name] = min(best[name], elapsed / numbers[name] * 1e6)
    return best


def load_kernel(path):
    """npu_moe_update_expert_reference from a reference.py file (e.g. an older revision)."""
    spec = importlib.util.spec_from_file_location("baseline_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.npu_moe_update_expert_reference


MAPPING_FLOOR = "floor: mapping (index_select of BS*K int32)"
PRUNING_FLOOR = "floor: pruning (float, sum over K, mul, ge)"
MODE0 = "op mode 0, unchanged table"
FULL_OP = "op mode 1 + pruning + active_mask (full op)"
WRAPPER_MODE0 = "torchair_plugin.npu_moe_update_expert mode 0, unchanged table"
WRAPPER_FULL_OP = "torchair_plugin.npu_moe_update_expert full op"


def kernel_cases(kernel, label, ids, table, scales, threshold, active):
    """The cases timed for a Python kernel called directly (this tree's and a baseline's)."""
    changing_table = table.clone()  # its own: the other cases must see an unchanged table
    last_entry = changing_table.view(-1)[-1:]  # a one-element view: writing it changes the table

    def mode0_changed_table():
        last_entry.add_(1)
        return kernel(ids, changing_table, local_rank_id=5, world_size=WORLD, balance_mode=0)

    return {
        f"{label} mode 0, unchanged table": lambda: kernel(
            ids, table, local_rank_id=5, world_size=WORLD, balance_mode=0),
        f"{label} mode 0, table changed every call": mode0_changed_table,
        f"{label} full op": lambda: kernel(ids, table, scales, threshold, active, balance_mode=1),
    }


def run(device, baseline=None):
    ids, table, scales, threshold, active = make_inputs(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    op = torch.ops.npu.npu_moe_update_expert.default
    flat_table, flat_index = table.view(-1), ids.view(-1)
    full = dict(expert_scales=scales, pruning_threshold=threshold, active_mask=active)

    def pruning_floor():
        wide = scales.float()
        return torch.ge(wide, torch.mul(wide.sum(1, keepdim=True), threshold))

    cases = {
        MAPPING_FLOOR: lambda: flat_table.index_select(0, flat_index),
        PRUNING_FLOOR: pruning_floor,
        MODE0: lambda: op(ids, table, local_rank_id=5, world_size=WORLD, balance_mode=0),
        "op mode 0 + pruning": lambda: op(ids, table, **full, local_rank_id=5, world_size=WORLD),
        "op mode 1": lambda: op(ids, table, balance_mode=1),
        FULL_OP: lambda: op(ids, table, **full, balance_mode=1),
        # The public wrapper: on plain CPU tensors in eager mode it skips the dispatcher.
        WRAPPER_MODE0: lambda: wrapper(ids, table, local_rank_id=5, world_size=WORLD, balance_mode=0),
        WRAPPER_FULL_OP: lambda: wrapper(ids, table, **full, balance_mode=1),
    }
    inputs = (ids, table, scales, threshold, active)
    # The reference runs the compiled kernel on CPU where one was built; python_reference never.
    cases.update(kernel_cases(npu_moe_update_expert_reference, "reference kernel:", *inputs))
    cases.update(kernel_cases(python_reference, "Python kernel:", *inputs))
    if baseline is not None:
        cases.update(kernel_cases(load_kernel(baseline), "baseline reference kernel:", *inputs))
    results = per_call_us(cases, sync)
    if device == "cpu":
        cpu_args = [t.cpu() for t in (ids, table, scales, threshold, active)]
        golden = {"golden loop, full op": lambda: golden_update_expert(*cpu_args, balance_mode=1)}
        results.update(per_call_us(golden, sync, rounds=3))
    return results


def ratios_of(results):
    floor, full_op = results[MAPPING_FLOOR], results[FULL_OP]
    floors = floor + results[PRUNING_FLOOR]
    ratios = {
        "mode0_unchanged_table_vs_mapping_floor": results[MODE0] / floor,
        "full_op_vs_sum_of_floors": full_op / floors,
        "wrapper_mode0_unchanged_table_vs_mapping_floor": results[WRAPPER_MODE0] / floor,
        "wrapper_full_op_vs_sum_of_floors": results[WRAPPER_FULL_OP] / floors,
        "full_op_vs_mapping_floor": full_op / floor,
        "torch_ops_vs_reference_kernel_full_op": full_op / results["reference kernel: full op"],
        "python_kernel_mode0_unchanged_table_vs_mapping_floor": results["Python kernel: mode 0, unchanged table"] / floor,
        "python_kernel_full_op_vs_sum_of_floors": results["Python kernel: full op"] / floors,
    }
    for case in ("mode 0, unchanged table", "mode 0, table changed every call", "full op"):
        if f"baseline reference kernel: {case}" in results:
            baseline = results[f"baseline reference kernel: {case}"]
            ratios[f"reference kernel {case}: this tree vs baseline"] = results[f"reference kernel: {case}"] / baseline
            ratios[f"Python kernel {case}: this tree vs baseline"] = results[f"Python kernel: {case}"] / baseline
    if "golden loop, full op" in results:
        ratios["golden_loop_vs_full_op"] = results["golden loop, full op"] / full_op
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers and ratios as JSON")
    parser.add_argument("--baseline", metavar="REFERENCE_PY",
                        help="also time the Python kernel of this reference.py file (before/after ratios)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {"shape": dict(BS=BS, K=K, moe_expert_num=EXPERTS, F=F, world_size=WORLD),
              "threads": args.threads, "torch": torch.__version__, "devices": {}}
    for device in devices:
        results = run(device, args.baseline)
        floor = results[MAPPING_FLOOR]
        print(f"\n{device} ({args.threads} thread(s)), BS={BS} K={K} experts={EXPERTS} F={F} world_size={WORLD}")
        if device == "cpu":
            print(f"CPU kernel: {_cpu_kernel.status()}")
        print(f"{'case':60s} {'us/call':>10s} {'x mapping floor':>16s}")
        for name, us in results.items():
            print(f"{name:60s} {us:10.1f} {us / floor:16.2f}")
        ratios = ratios_of(results)
        for name, value in ratios.items():
            print(f"ratio {name:65s} {value:8.2f}")
        report["devices"][device] = {"us_per_call": results, "ratios": ratios}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
