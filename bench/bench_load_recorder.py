"""ExpertLoadRecorder in a compiled graph vs counting on the host with bincount.

    PYTHONPATH=. python bench/bench_load_recorder.py [--backend inductor] [--json bench/results/load_recorder.json]

Per call, for one MoE layer's op outputs (BS x K physical ids and the pruning mask): the
recorder compiled on its own (``fullgraph``, one ``index_add_``), the recorder eager, and the host
route a loop without a device recorder takes: the outputs to the host, a boolean select of the
kept pairs (a data-dependent shape) and ``torch.bincount``. On CPU the host route pays no device
to host copy; on an NPU it also pays a sync per call, which the recorder never does.
"""

import argparse
import json
import os
import time

import torchair_plugin  # noqa: F401
import torch

from torchair_plugin.eplb import ExpertLoadRecorder


def _per_call(fn, repeats):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--physical", type=int, default=288, help="physical experts (DeepSeek-like: 256 + 32)")
    parser.add_argument("--bs", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--json", default="bench/results/load_recorder.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    recorder = ExpertLoadRecorder(args.physical, window=args.window)
    compiled = torch.compile(recorder.record, backend=args.backend, fullgraph=True, dynamic=True)
    rows = []
    print(f"{args.physical} physical experts, top-{args.top_k}, window {args.window}, backend {args.backend}")
    print(f"{'BS':>5} {'compiled':>12} {'eager':>12} {'host bincount':>14}")
    for bs in args.bs:
        ids = torch.randint(0, args.physical, (bs, args.top_k), dtype=torch.int32)
        mask = torch.rand(bs, args.top_k) < 0.8
        row = {
            "bs": bs,
            "compiled_s": _per_call(lambda: compiled(ids, mask), args.repeats),
            "eager_s": _per_call(lambda: recorder.record(ids, mask), args.repeats),
            "host_bincount_s": _per_call(
                lambda: torch.bincount(ids.cpu()[mask.cpu()], minlength=args.physical), args.repeats
            ),
        }
        rows.append(row)
        print(
            f"{bs:>5} {row['compiled_s'] * 1e6:>10.1f}us {row['eager_s'] * 1e6:>10.1f}us "
            f"{row['host_bincount_s'] * 1e6:>12.1f}us"
        )
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {"backend": args.backend, "physical": args.physical, "top_k": args.top_k, "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
