"""FX -> GE lowering time of the plugin's converter against torch-npu's own, in one run.

For each graph (the op with every optional input, static and dynamic, and the
update -> dispatch -> combine chain) two numbers, each for both converters, interleaved:

- lowering: torchair's compiler on an already-traced aten FX graph (``make_fx`` once), i.e.
  FX -> GE conversion plus torchair's GE graph optimisation, nothing of Dynamo;
- end to end: ``capture_ge_graphs`` (Dynamo, AOT, lowering, eager run on CPU) from scratch.

Medians of repeated runs; ratios are plugin / native (target: lowering <= 1.1).

    python bench/bench_lowering.py [--repeat 30] [--json bench/results/lowering.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import time
import warnings

import torchair_plugin  # noqa: F401  (first: sets up torch's import on torch-npu machines)
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from torchair_plugin import _converter_hook
from torchair_plugin.testing.lowering import LowerSpec
from torchair_plugin.testing import capture_ge_graphs, import_torchair
from torchair_plugin.testing.companion_ops import define_companion_ops

NATIVE_MODULE = "torchair._ge_concrete_graph.ge_converter.custom.npu_moe_update_expert"
ALL_OPTIONAL = ("expert_scales", "pruning_threshold", "active_mask")
GRAPHS = {
    "op_static": LowerSpec(optional=ALL_OPTIONAL),
    "op_dynamic": LowerSpec(optional=ALL_OPTIONAL, dynamic=True),
    "chain_static": LowerSpec(optional=("expert_scales", "pruning_threshold"), chain=True),
}


def converters(torchair):
    op = torch.ops.npu.npu_moe_update_expert.default
    ours = _converter_hook.converter_module().convert_npu_moe_update_expert
    importlib.reload(importlib.import_module(NATIVE_MODULE))  # registers torch-npu's (last wins)
    native = op._ge_converter  # torchair's registry attribute: the wrapped native converter
    torchair.register_fx_node_ge_converter(op)(ours)
    plugin = op._ge_converter

    def use(which):
        op._ge_converter = plugin if which == "plugin" else native

    return use


def lowering_seconds(torchair, spec: LowerSpec) -> float:
    fn = spec.function()

    def as_tuple(*inputs):
        out = fn(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    gm = make_fx(as_tuple, tracing_mode="symbolic" if spec.dynamic else "fake")(*spec.inputs())
    example = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    config = torchair.CompilerConfig()
    config.debug.run_eagerly = True
    compiler = torchair.get_compiler(config)
    fake_mode = torch._guards.detect_fake_mode(example)
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        start = time.perf_counter()
        compiler(gm, example)
        return time.perf_counter() - start


def capture_seconds(spec: LowerSpec) -> float:
    start = time.perf_counter()
    capture_ge_graphs(spec.function(), *spec.inputs(), dynamic=spec.dynamic)
    return time.perf_counter() - start


def measure(use, repeat: int, fn) -> dict:
    times = {"plugin": [], "native": []}
    for _ in range(repeat):
        for which in ("plugin", "native"):  # interleaved: drift hits both
            use(which)
            times[which].append(fn())
    use("plugin")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"plugin_s": med["plugin"], "native_s": med["native"], "ratio": med["plugin"] / med["native"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--capture-repeat", type=int, default=5)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "lowering.json"))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    torchair = import_torchair()
    define_companion_ops()
    use = converters(torchair)
    results = {"torch": torch.__version__, "repeat": args.repeat, "graphs": {}}
    print(
        f"{'graph':<14} {'lowering plugin':>16} {'native':>10} {'ratio':>6}   {'capture plugin':>15} {'native':>10} {'ratio':>6}"
    )
    for name, spec in GRAPHS.items():
        for _ in range(3):  # warm up both paths (first compile imports and caches)
            for which in ("plugin", "native"):
                use(which)
                lowering_seconds(torchair, spec)
        lowering = measure(use, args.repeat, lambda: lowering_seconds(torchair, spec))
        capture = measure(use, args.capture_repeat, lambda: capture_seconds(spec))
        results["graphs"][name] = {"lowering": lowering, "capture": capture}
        print(
            f"{name:<14} {lowering['plugin_s'] * 1e3:>13.2f} ms {lowering['native_s'] * 1e3:>7.2f} ms {lowering['ratio']:>6.3f}"
            f"   {capture['plugin_s'] * 1e3:>12.1f} ms {capture['native_s'] * 1e3:>7.1f} ms {capture['ratio']:>6.3f}"
        )
    worst = max(g["lowering"]["ratio"] for g in results["graphs"].values())
    results["worst_lowering_ratio"] = worst
    print(f"worst lowering ratio plugin/native: {worst:.3f} (target <= 1.1)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
