"""Per-call time of npu_moe_update_expert against its floors, in one run.

Shapes of a large serving layer: BS=512, K=16, moe_expert_num=1024, F=9, world_size=64. Two
floors, the least any implementation must do: mapping, one index_select of BS*K int32 elements
from the flattened table; pruning, the scales widened to float32, one sum over K, one multiply,
one comparison. The full op (mode 1, pruning, active_mask) is reported against their sum. Times
are the best of repeated timer blocks, the cases interleaved; the machines are noisy, so read
the ratios.

``--baseline-rev REV`` also times the reference kernel of an older revision of this repository
(its ``reference.py`` and the package modules it imports, loaded under another package name from
a private temporary directory) with the same inputs in the same run, for before/after ratios:

    python bench/bench_op.py [--threads 1] [--json PATH] [--baseline-rev 4baf99d]

On CUDA (where there is a GPU) the same cases run, with the kernel launches per call counted by
the profiler.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

import torchair_plugin  # first: sets up torch's import on torch-npu machines
import torch
from torchair_plugin.reference import npu_moe_update_expert_reference

BS, K, EXPERTS, F, WORLD = 512, 16, 1024, 9, 64
REPOSITORY = Path(__file__).resolve().parent.parent


def make_inputs(device):
    gen = torch.Generator().manual_seed(0)
    table = torch.randint(0, EXPERTS, (EXPERTS, F), generator=gen, dtype=torch.int32)
    table[:, 0] = torch.randint(1, F, (EXPERTS,), generator=gen, dtype=torch.int32)
    ids = torch.randint(0, EXPERTS, (BS, K), generator=gen, dtype=torch.int32)
    scales = torch.rand(BS, K, generator=gen).sort(1, descending=True).values.to(torch.bfloat16)
    threshold = torch.full((K,), 0.5 / K)
    active = torch.arange(BS) < BS - 37
    return tuple(t.to(device) for t in (ids, table, scales, threshold, active))


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


_RENAMED_IMPORT = re.compile(r"^(\s*from|\s*import) torchair_plugin\b", re.MULTILINE)
_IMPORT = re.compile(r"^\s*from torchair_plugin(?:\.(\w+))? import \(?([\w, ]+)", re.MULTILINE)


def load_baseline_reference(revision: str, directory: Path):
    """npu_moe_update_expert_reference of ``revision``, with the package modules it imports.

    The modules are written to ``directory`` as package ``_baseline_torchair_plugin`` (their
    ``torchair_plugin`` imports renamed) so that nothing registers a second op or replaces this
    tree's modules. Files that sit beside a module in the old tree (a C source) come along."""
    package = directory / "_baseline_torchair_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    old_files = subprocess.run(
        ["git", "-C", str(REPOSITORY), "ls-tree", "--name-only", revision, "torchair_plugin/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    pending, done = ["reference"], set()
    while pending:
        name = pending.pop()
        if name in done:
            continue
        done.add(name)
        source = subprocess.run(
            ["git", "-C", str(REPOSITORY), "show", f"{revision}:torchair_plugin/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for module, names in _IMPORT.findall(source):
            candidates = [module] if module else [n.strip() for n in names.split(",")]
            pending.extend(c for c in candidates if f"torchair_plugin/{c}.py" in old_files)
        (package / f"{name}.py").write_text(_RENAMED_IMPORT.sub(r"\1 _baseline_torchair_plugin", source))
    for path in old_files:
        if not path.endswith(".py"):
            blob = subprocess.run(
                ["git", "-C", str(REPOSITORY), "show", f"{revision}:{path}"], check=True, capture_output=True
            ).stdout
            (package / Path(path).name).write_bytes(blob)
    sys.path.insert(0, str(directory))
    return importlib.import_module("_baseline_torchair_plugin.reference").npu_moe_update_expert_reference


MAPPING_FLOOR = "floor: mapping (index_select of BS*K int32)"
PRUNING_FLOOR = "floor: pruning (float, sum over K, mul, ge)"
WRAPPER_MODE0 = "torchair_plugin.npu_moe_update_expert mode 0"
WRAPPER_FULL_OP = "torchair_plugin.npu_moe_update_expert full op"


def kernel_cases(kernel, label, ids, table, scales, threshold, active):
    """The two headline calls of a kernel with the schema's positional signature."""
    return {
        f"{label} mode 0": lambda: kernel(ids, table, None, None, None, 5, WORLD, 0),
        f"{label} full op": lambda: kernel(ids, table, scales, threshold, active, -1, -1, 1),
    }


def run(device, baseline=None):
    ids, table, scales, threshold, active = inputs = make_inputs(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    op = torch.ops.npu.npu_moe_update_expert.default
    wrapper = torchair_plugin.npu_moe_update_expert
    flat_table, flat_index = table.view(-1), ids.view(-1)
    full = dict(expert_scales=scales, pruning_threshold=threshold, active_mask=active)

    def pruning_floor():
        wide = scales.float()
        return torch.ge(wide, torch.mul(wide.sum(1, keepdim=True), threshold))

    cases = {
        MAPPING_FLOOR: lambda: flat_table.index_select(0, flat_index),
        PRUNING_FLOOR: pruning_floor,
        WRAPPER_MODE0: lambda: wrapper(ids, table, local_rank_id=5, world_size=WORLD, balance_mode=0),
        "torchair_plugin.npu_moe_update_expert mode 1": lambda: wrapper(ids, table, balance_mode=1),
        "torchair_plugin.npu_moe_update_expert mode 0 + pruning": lambda: wrapper(
            ids, table, **full, local_rank_id=5, world_size=WORLD
        ),
        WRAPPER_FULL_OP: lambda: wrapper(ids, table, **full, balance_mode=1),
        "torch.ops full op": lambda: op(ids, table, **full, balance_mode=1),
    }
    cases.update(kernel_cases(npu_moe_update_expert_reference, "reference kernel, direct:", *inputs))
    if baseline is not None:
        cases.update(kernel_cases(baseline, "baseline reference kernel:", *inputs))
    results = per_call_us(cases, sync)
    launches = launches_per_call(cases, sync) if device == "cuda" else {}
    return results, launches


def launches_per_call(cases, sync):
    """CUDA kernel launches of one call of every case, counted by the profiler."""
    counts = {}
    for name, fn in cases.items():
        sync()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            fn()
            sync()
        counts[name] = sum(1 for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    return counts


def ratios_of(results):
    floor = results[MAPPING_FLOOR]
    floors = floor + results[PRUNING_FLOOR]
    ratios = {
        "wrapper mode 0 / mapping floor (target <= 5)": results[WRAPPER_MODE0] / floor,
        "wrapper full op / sum of floors (target <= 3)": results[WRAPPER_FULL_OP] / floors,
    }
    for case in ("mode 0", "full op"):
        if f"baseline reference kernel: {case}" in results:
            baseline = results[f"baseline reference kernel: {case}"]
            ratios[f"{case}: this tree's wrapper / baseline reference kernel"] = (
                results[f"torchair_plugin.npu_moe_update_expert {case}"] / baseline
            )
            ratios[f"{case}: this tree's reference kernel / baseline reference kernel"] = (
                results[f"reference kernel, direct: {case}"] / baseline
            )
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers and ratios as JSON")
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="also time the reference kernel of this git revision (before/after ratios)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {
        "shape": dict(BS=BS, K=K, moe_expert_num=EXPERTS, F=F, world_size=WORLD),
        "threads": args.threads,
        "torch": torch.__version__,
        "devices": {},
    }
    with tempfile.TemporaryDirectory() as directory:
        baseline = load_baseline_reference(args.baseline_rev, Path(directory)) if args.baseline_rev else None
        for device in devices:
            results, launches = run(device, baseline)
            floor = results[MAPPING_FLOOR]
            print(f"\n{device} ({args.threads} thread(s)), BS={BS} K={K} experts={EXPERTS} F={F} world_size={WORLD}")
            print(f"{'case':60s} {'us/call':>10s} {'x mapping floor':>16s}" + (" launches" if launches else ""))
            for name, us in results.items():
                print(f"{name:60s} {us:10.1f} {us / floor:16.2f}" + (f" {launches[name]:8d}" if launches else ""))
            ratios = ratios_of(results)
            for name, value in ratios.items():
                print(f"ratio {name:70s} {value:8.2f}")
            report["devices"][device] = {"us_per_call": results, "ratios": ratios, "launches_per_call": launches}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
