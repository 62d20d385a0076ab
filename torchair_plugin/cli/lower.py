"""``torchair-plugin lower``: print the GE graph torchair lowers the op (or the MoE chain) to.

Runs torchair's real FX -> GE lowering through :mod:`torchair_plugin.testing` (no NPU needed; on
a machine without CANN it needs torch-npu and a C compiler). Output: the stable readable form
(default), ``--format pbtxt`` (what torchair's own graph dump writes) or ``--format json``.

:class:`LowerSpec` (shapes, attrs, optional inputs, dtypes -> example inputs and the function
to compile) is shared with the lowering regression suite.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from torchair_plugin import limits
from torchair_plugin.schema import OPTIONAL_INPUTS

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # bad arguments, and capture impossible on this machine (argparse's code)
IDS_DTYPES = limits.dtype_names("expert_ids")
SCALES_DTYPES = limits.dtype_names("expert_scales")
X_DTYPES = ("bfloat16", "float16")  # dispatch_v2's x (--chain), not an input of this op


@dataclass(frozen=True)
class LowerSpec:
    """One lowering: the op's shapes and attrs, which optional inputs, dtypes, dynamism."""

    bs: int = 8
    k: int = 4
    experts: int = 16
    f: Optional[int] = None  # eplb_table columns; None: world_size + 1
    physical_experts: Optional[int] = None  # slots over all ranks (dispatch's moe_expert_num); None: experts
    world_size: int = 4
    rank: int = 1
    balance_mode: int = 0
    optional: Tuple[str, ...] = ()
    ids_dtype: str = "int32"
    scales_dtype: str = "float32"
    threshold_2d: bool = False
    dynamic: bool = False
    chain: bool = False
    hidden: int = 32
    x_dtype: str = "bfloat16"

    @property
    def columns(self) -> int:
        return self.f if self.f is not None else self.world_size + 1

    @property
    def physical(self) -> int:
        return self.physical_experts if self.physical_experts is not None else self.experts

    def attrs(self) -> dict:
        # Mode 1 ignores rank and world size, but they are still the node's attributes: a model
        # passes them, and the lowered graph should show what it passed.
        return {"local_rank_id": self.rank, "world_size": self.world_size, "balance_mode": self.balance_mode}

    def inputs(self, device: str = "cpu") -> List[Any]:
        """expert_ids, eplb_table, the chosen optional inputs, and for the chain x (and combine's
        expert_scales when the op is not given them). Valid values, every token active: physical
        expert p is a replica of logical expert p % experts (without redundancy, p = e)."""
        import torch

        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.experts, (self.bs, self.k), generator=g).to(getattr(torch, self.ids_dtype))
        table = torch.zeros(self.experts, self.columns, dtype=torch.int32)
        physical = torch.arange(self.physical, dtype=torch.int32)
        table[:, 0] = torch.bincount(physical % self.experts, minlength=self.experts)
        if self.columns > 1:  # F = 1 is the op's to reject, with its own message
            table[physical % self.experts, 1 + physical // self.experts] = physical
        given = {
            "expert_scales": torch.rand(self.bs, self.k, generator=g).to(getattr(torch, self.scales_dtype)),
            "pruning_threshold": torch.full((1, self.k) if self.threshold_2d else (self.k,), 0.05),
            "active_mask": torch.ones(self.bs, dtype=torch.bool),
        }
        args = [ids, table] + [given[name] for name in OPTIONAL_INPUTS if name in self.optional]
        if self.chain:
            args.append(torch.randn(self.bs, self.hidden, generator=g).to(getattr(torch, self.x_dtype)))
            if "expert_scales" not in self.optional:  # combine needs its own weights then
                args.append(torch.rand(self.bs, self.k, generator=g))
        return [a.to(device) for a in args]

    def function(self) -> Callable:
        """The function to compile; its positional arguments are :meth:`inputs`."""
        import torch

        attrs, names, chain = self.attrs(), [n for n in OPTIONAL_INPUTS if n in self.optional], self.chain
        group_size, rank, experts = self.world_size, self.rank, self.physical

        def update(ids, table, *rest):
            optional = dict(zip(names, rest))
            outputs = torch.ops.npu.npu_moe_update_expert(ids, table, **optional, **attrs)
            if not chain:
                return outputs
            balanced_ids, balanced_mask = outputs
            x = rest[len(names)]
            scales = optional["expert_scales"] if "expert_scales" in optional else rest[len(names) + 1]
            expand_x, _, assist_info, _, ep_recv_counts, _, _ = torch.ops.npu.npu_moe_distribute_dispatch_v2(
                x, balanced_ids, "ep", group_size, rank, experts, x_active_mask=balanced_mask
            )
            return torch.ops.npu.npu_moe_distribute_combine_v2(
                expand_x, balanced_ids, assist_info, ep_recv_counts, scales.float(), "ep", group_size, rank, experts,
                x_active_mask=balanced_mask,
            )

        return update


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_lower_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lower",
        help="print the GE graph of npu_moe_update_expert (or update -> dispatch -> combine)",
        description="Lower npu_moe_update_expert (with --chain: update_expert -> npu_moe_distribute_dispatch_v2 "
        "-> npu_moe_distribute_combine_v2) to a GE graph with torchair, without an NPU, and print it.",
    )
    shapes = parser.add_argument_group("shapes and attributes")
    shapes.add_argument("--bs", type=_positive, default=8, help="tokens, expert_ids.size(0) (default 8)")
    shapes.add_argument("--k", type=_positive, default=4, help="top-K, expert_ids.size(1) (default 4)")
    shapes.add_argument("--experts", type=_positive, default=16, help="moe_expert_num, eplb_table rows (default 16)")
    shapes.add_argument("--f", type=_positive, default=None, help="eplb_table columns (default world size + 1)")
    shapes.add_argument(
        "--physical-experts", type=_positive, default=None, metavar="N",
        help="physical experts over all ranks, >= --experts and divisible by --world-size: dispatch's "
        "moe_expert_num with --chain; physical expert p replicates logical expert p %% experts "
        "(default --experts: no redundancy)",
    )
    shapes.add_argument("--world-size", type=_positive, default=4, help="world_size / ep_world_size (default 4)")
    shapes.add_argument("--rank", type=_non_negative, default=1, help="local_rank_id / ep_rank_id (default 1)")
    shapes.add_argument("--mode", type=int, choices=(0, 1), default=0,
                        help="balance_mode (default 0; mode 1 ignores --rank and --world-size, the node still carries them)")
    shapes.add_argument("--hidden", type=_positive, default=32, help="--chain: hidden size of x (default 32)")
    inputs = parser.add_argument_group("optional inputs and dtypes")
    inputs.add_argument(
        "--optional", nargs="*", choices=OPTIONAL_INPUTS, default=[], metavar="INPUT",
        help=f"optional inputs to give, of {', '.join(OPTIONAL_INPUTS)} (pruning needs the first two together)",
    )
    inputs.add_argument("--ids-dtype", choices=IDS_DTYPES, default="int32", help="dtype of expert_ids (default int32)")
    inputs.add_argument("--scales-dtype", choices=SCALES_DTYPES, default="float32",
                        help="dtype of expert_scales (default float32)")
    inputs.add_argument("--threshold-shape", choices=("k", "1k"), default="k", help="pruning_threshold (K,) or (1, K)")
    inputs.add_argument("--x-dtype", choices=X_DTYPES, default="bfloat16", help="--chain: dtype of x")
    parser.add_argument("--dynamic", action="store_true", help="compile with dynamic=True (symbolic shapes, -1 dims)")
    parser.add_argument("--chain", action="store_true", help="lower update_expert -> dispatch_v2 -> combine_v2")
    parser.add_argument("--format", choices=("text", "pbtxt", "json"), default="text", help="output form (default text)")
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    parser.set_defaults(func=run_lower)
    return parser


def spec_from_args(args: argparse.Namespace) -> LowerSpec:
    return LowerSpec(
        bs=args.bs, k=args.k, experts=args.experts, f=args.f, physical_experts=args.physical_experts,
        world_size=args.world_size, rank=args.rank,
        balance_mode=args.mode, optional=tuple(dict.fromkeys(args.optional)), ids_dtype=args.ids_dtype,
        scales_dtype=args.scales_dtype, threshold_2d=args.threshold_shape == "1k", dynamic=args.dynamic,
        chain=args.chain, hidden=args.hidden, x_dtype=args.x_dtype,
    )


def _error(message: str) -> int:
    print(f"torchair-plugin lower: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def lower(spec: LowerSpec) -> Any:
    """The :class:`~torchair_plugin.testing.capture.CapturedGraph` of ``spec``.

    Raises ``CannLessUnavailable`` where capture cannot run, and the op's own RuntimeError
    (checked eagerly on meta tensors first, so the message is the op's, not Dynamo's) for
    shapes or attributes the NPU would reject.
    """
    from torchair_plugin.testing import capture_ge_graphs, import_torchair
    from torchair_plugin.testing.companion_ops import define_companion_ops

    # torch_npu prints a warning about CANN's variables on stdout, where it would corrupt --json.
    with contextlib.redirect_stdout(sys.stderr):
        import_torchair()
    if spec.chain:
        define_companion_ops()
    fn = spec.function()
    fn(*spec.inputs("meta"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return capture_ge_graphs(fn, *spec.inputs(), dynamic=spec.dynamic).graph


def _physical_experts_error(spec: LowerSpec) -> Optional[str]:
    """Why ``--physical-experts`` cannot describe a placement with these shapes, or None."""
    physical = spec.physical
    if physical < spec.experts or physical % spec.world_size:
        return (f"--physical-experts must be >= --experts={spec.experts} and divisible by "
                f"--world-size={spec.world_size}, got {physical}")
    replicas = -(-physical // spec.experts)
    if replicas > spec.columns - 1:
        return (f"--physical-experts={physical} puts up to {replicas} replicas on one of {spec.experts} logical "
                f"experts: eplb_table needs --f >= {replicas + 1}, got {spec.columns}")
    return None


def run_lower(args: argparse.Namespace) -> int:
    from torchair_plugin.testing import CannLessUnavailable

    spec = spec_from_args(args)
    if spec.physical_experts is not None:
        problem = _physical_experts_error(spec)
        if problem:
            return _error(problem)
    try:
        graph = lower(spec)
    except CannLessUnavailable as exc:
        return _error(f"GE graph capture is unavailable here: {exc}")
    except RuntimeError as exc:  # the op's (or a companion op's) own check
        return _error(str(exc).strip().splitlines()[0])
    except Exception as exc:  # a shape function failing on these arguments: still no traceback
        return _error(f"cannot lower with these arguments: {type(exc).__name__}: {exc}")
    if args.format == "pbtxt":
        sys.stdout.write(graph.to_pbtxt())
    elif args.format == "json":
        sys.stdout.write(graph.to_json())
    else:
        sys.stdout.write(graph.text)
    return EXIT_OK
