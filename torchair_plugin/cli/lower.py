"""``torchair-plugin lower``: print the GE graph torchair lowers the op (or the MoE chain) to.

Runs torchair's real FX -> GE lowering through :mod:`torchair_plugin.testing` (no NPU needed; on
a machine without CANN it needs torch-npu and a C compiler). Output: the stable readable form
(default), ``--format pbtxt`` (what torchair's own graph dump writes) or ``--format json``. This
module only turns arguments into a :class:`~torchair_plugin.testing.lowering.LowerSpec`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torchair_plugin.cli import EXIT_OK
from torchair_plugin.cli._args import int_in, usage_error
from torchair_plugin.schema import OPTIONAL_INPUTS
from torchair_plugin.testing.lowering import IDS_DTYPES, SCALES_DTYPES, X_DTYPES, LowerSpec, lower

_POSITIVE = int_in(1, 2**31 - 1)
_NON_NEGATIVE = int_in(0, 2**31 - 1)


def add_lower_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lower",
        help="print the GE graph of npu_moe_update_expert (or update -> dispatch -> combine)",
        description="Lower npu_moe_update_expert (with --chain: update_expert -> npu_moe_distribute_dispatch_v2 "
        "-> npu_moe_distribute_combine_v2) to a GE graph with torchair, without an NPU, and print it.",
    )
    shapes = parser.add_argument_group("shapes and attributes")
    shapes.add_argument("--bs", type=_POSITIVE, default=8, help="tokens, expert_ids.size(0) (default 8)")
    shapes.add_argument("--k", type=_POSITIVE, default=4, help="top-K, expert_ids.size(1) (default 4)")
    shapes.add_argument("--experts", type=_POSITIVE, default=16, help="moe_expert_num, eplb_table rows (default 16)")
    shapes.add_argument("--f", type=_POSITIVE, default=None, help="eplb_table columns (default world size + 1)")
    shapes.add_argument(
        "--physical-experts",
        type=_POSITIVE,
        default=None,
        metavar="N",
        help="physical experts over all ranks, >= --experts and divisible by --world-size: dispatch's "
        "moe_expert_num with --chain; physical expert p replicates logical expert p %% experts "
        "(default --experts: no redundancy)",
    )
    shapes.add_argument("--world-size", type=_POSITIVE, default=4, help="world_size / ep_world_size (default 4)")
    shapes.add_argument("--rank", type=_NON_NEGATIVE, default=1, help="local_rank_id / ep_rank_id (default 1)")
    shapes.add_argument(
        "--mode",
        type=int,
        choices=(0, 1),
        default=0,
        help="balance_mode (default 0; mode 1 ignores --rank and --world-size, the node still carries them)",
    )
    shapes.add_argument("--hidden", type=_POSITIVE, default=32, help="--chain: hidden size of x (default 32)")
    inputs = parser.add_argument_group("optional inputs and dtypes")
    inputs.add_argument(
        "--optional",
        nargs="*",
        choices=OPTIONAL_INPUTS,
        default=[],
        metavar="INPUT",
        help=f"optional inputs to give, of {', '.join(OPTIONAL_INPUTS)} (pruning needs the first two together)",
    )
    inputs.add_argument("--ids-dtype", choices=IDS_DTYPES, default="int32", help="dtype of expert_ids (default int32)")
    inputs.add_argument(
        "--scales-dtype", choices=SCALES_DTYPES, default="float32", help="dtype of expert_scales (default float32)"
    )
    inputs.add_argument("--threshold-shape", choices=("k", "1k"), default="k", help="pruning_threshold (K,) or (1, K)")
    inputs.add_argument("--x-dtype", choices=X_DTYPES, default="bfloat16", help="--chain: dtype of x")
    parser.add_argument("--dynamic", action="store_true", help="compile with dynamic=True (symbolic shapes, -1 dims)")
    parser.add_argument(
        "--chain",
        nargs="?",
        const="v2",
        choices=("v1", "v2"),
        default=None,
        help="lower update_expert -> dispatch -> combine: v2 (the default, npu_moe_distribute_dispatch_v2 and "
        "combine_v2) or v1 (npu_moe_distribute_dispatch and combine, where the installed torch-npu has them)",
    )
    parser.add_argument(
        "--format", choices=("text", "pbtxt", "json"), default="text", help="output form (default text)"
    )
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    parser.set_defaults(func=run_lower)
    return parser


def spec_from_args(args: argparse.Namespace) -> LowerSpec:
    return LowerSpec(
        bs=args.bs,
        k=args.k,
        experts=args.experts,
        f=args.f,
        physical_experts=args.physical_experts,
        world_size=args.world_size,
        rank=args.rank,
        balance_mode=args.mode,
        optional=tuple(dict.fromkeys(args.optional)),
        ids_dtype=args.ids_dtype,
        scales_dtype=args.scales_dtype,
        threshold_2d=args.threshold_shape == "1k",
        dynamic=args.dynamic,
        chain=args.chain is not None,
        chain_version=args.chain or "v2",
        hidden=args.hidden,
        x_dtype=args.x_dtype,
    )


def run_lower(args: argparse.Namespace) -> int:
    from torchair_plugin.testing import CannLessUnavailable

    spec = spec_from_args(args)
    problem = spec.problem()
    if problem:
        return usage_error("torchair-plugin lower", problem)
    try:
        graph = lower(spec)
    except CannLessUnavailable as exc:
        return usage_error("torchair-plugin lower", f"GE graph capture is unavailable here: {exc}")
    except RuntimeError as exc:  # the op's (or a companion op's) own check
        return usage_error("torchair-plugin lower", str(exc).strip().splitlines()[0])
    except Exception as exc:  # a shape function failing on these arguments: still no traceback
        return usage_error("torchair-plugin lower", f"cannot lower with these arguments: {type(exc).__name__}: {exc}")
    from torchair_plugin.testing import describe_capture

    # stdout is the graph alone (--json, pbtxt); which torch_npu the capture ran on goes to stderr
    print(f"torchair-plugin lower: captured with {describe_capture()}", file=sys.stderr)
    if args.format == "pbtxt":
        sys.stdout.write(graph.to_pbtxt())
    elif args.format == "json":
        sys.stdout.write(graph.to_json())
    else:
        sys.stdout.write(graph.text)
    return EXIT_OK
