"""``balance``: the load-balance report from the command line.

Wire it into a parser with :func:`add_balance_subcommand`; the handler returns the exit status
(0, or 2 on bad input after printing one ``error:`` line to stderr, never a traceback).
Inputs: saved routing (world_size, tokens, K) and/or eplb_table files (.pt, .npy, .json, see
``io``); what is not given is generated: a skewed workload, and a table planned from its load.
"""

from __future__ import annotations

import argparse
import json

from torchair_plugin import limits
from torchair_plugin.cli import EXIT_OK
from torchair_plugin.cli._args import int_in, usage_error
from torchair_plugin.cli.balance_model import add_model_arguments, run_model_balance
from torchair_plugin.eplb._arrays import check_expert_ids
from torchair_plugin.eplb.io import in_file, load_eplb_table, load_routing
from torchair_plugin.eplb.load_report import format_report, load_report
from torchair_plugin.eplb.planner import plan_placement
from torchair_plugin.eplb.workload import expert_load, skewed_routing

DEFAULT_WORLD_SIZE = 8
DEFAULT_EXPERTS = 64


def add_balance_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add ``balance`` to an argparse subparsers object; its handler is set as ``func``."""
    parser = subparsers.add_parser(
        "balance",
        help="tokens per rank without redundancy vs balance_mode 0 vs balance_mode 1",
        description="Route tokens through npu_moe_update_expert rank by rank and report the load "
        "each rank receives: no redundancy (one copy per expert, E / world_size consecutive experts "
        "per rank), balance_mode 0, balance_mode 1.",
    )
    parser.add_argument("--routing", metavar="PATH", help="routing file (world_size, tokens, K); default: generated")
    parser.add_argument("--table", metavar="PATH", help="eplb_table file; default: planned from the routing's load")
    parser.add_argument(
        "--world-size",
        type=int_in(limits.MIN_WORLD_SIZE, limits.MAX_WORLD_SIZE),
        help=f"ranks (default {DEFAULT_WORLD_SIZE}, or --routing's)",
    )
    parser.add_argument(
        "--experts",
        type=int,
        help=f"logical experts (default: --table's rows, else --routing's largest id + 1, else {DEFAULT_EXPERTS})",
    )
    parser.add_argument("--tokens-per-rank", type=int, default=512, help="generated tokens per rank (default 512)")
    parser.add_argument("--top-k", type=int, default=8, help="experts per generated token (default 8)")
    parser.add_argument("--skew", type=float, default=1.2, help="expert popularity ~ 1/i**skew (default 1.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated workload (default 0)")
    parser.add_argument(
        "--slots-per-rank",
        type=int,
        help="physical experts per rank of a planned table (default experts / world_size + 2)",
    )
    parser.add_argument(
        "--plan-mode", type=int, choices=(0, 1), default=1, help="balance_mode the table is planned for (default 1)"
    )
    parser.add_argument("--png", metavar="PATH", help="also write a bar chart per rank (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the text table")
    add_model_arguments(parser)
    parser.set_defaults(func=run_balance)
    return parser


def _num_experts(args, routing, table) -> int:
    """Logical experts: the table's rows, else the routing's largest id + 1 (experts no token
    chose are invisible in a routing: pass --experts then), else --experts or the default."""
    if table is not None:
        if args.experts not in (None, table.shape[0]):
            raise ValueError(f"--experts {args.experts} disagrees with {args.table}'s {table.shape[0]} rows")
        return table.shape[0]
    if args.experts is not None:
        return args.experts
    if routing is not None:
        if routing.numel() == 0:
            raise ValueError(f"{args.routing}: routing holds no tokens, got shape {tuple(routing.shape)}")
        return int(routing.max()) + 1  # load_routing keeps ids below 1024
    return DEFAULT_EXPERTS


def _experts_source(args, table) -> str:
    """Where the expert count came from, for the message of an id beyond it."""
    if table is not None:
        return f" ({args.table} has {table.shape[0]} rows)"
    return " (--experts)"


def _inputs(args):
    """(routing, eplb_table, world_size, plan or None) from files and/or generation."""
    routing = load_routing(args.routing) if args.routing else None
    world_size = DEFAULT_WORLD_SIZE if args.world_size is None else args.world_size
    if routing is not None:
        if args.world_size not in (None, routing.shape[0]):
            raise ValueError(f"--world-size {args.world_size} disagrees with {args.routing}'s {routing.shape[0]} ranks")
        world_size = routing.shape[0]
    if not limits.MIN_WORLD_SIZE <= world_size <= limits.MAX_WORLD_SIZE:  # balance_mode 0 needs it
        raise ValueError(f"world_size must be in [{limits.MIN_WORLD_SIZE}, {limits.MAX_WORLD_SIZE}], got {world_size}")
    table = load_eplb_table(args.table, world_size) if args.table else None
    if table is not None and table.dim() != 2:
        raise ValueError(
            f"{args.table}: balance needs one layer's eplb_table (moe_expert_num, F), got shape {tuple(table.shape)}"
        )
    num_experts = _num_experts(args, routing, table)
    if routing is not None:
        with in_file(args.routing):
            check_expert_ids("routing", routing.numpy(), num_experts, _experts_source(args, table))
    if routing is None:
        routing = skewed_routing(num_experts, world_size, args.tokens_per_rank, args.top_k, args.skew, args.seed)
    plan = None
    if table is None:
        slots = args.slots_per_rank if args.slots_per_rank is not None else -(-num_experts // world_size) + 2
        load = expert_load(routing, num_experts, per_source=args.plan_mode == 0)
        plan = plan_placement(load, world_size, slots, balance_mode=args.plan_mode)
        table = plan.eplb_table
    return routing, table, world_size, plan


def _notes(args, plan) -> list:
    """What the chart's setup line cannot read from the report: where routing and table came from."""
    workload = f"routing {args.routing}" if args.routing else f"skew {args.skew:g} (seed {args.seed})"
    table = f"table planned for balance_mode {plan.balance_mode}" if plan is not None else f"table {args.table}"
    return [workload, table]


def run_balance(args) -> int:
    """Handler of ``balance``: print the report (text or JSON), write the PNG if asked; with
    ``--loads``, plan the whole model instead (``balance_model``)."""
    if args.loads:
        try:
            if args.routing or args.table or args.png:
                raise ValueError("--loads plans a whole model: it takes no --routing, --table or --png")
            run_model_balance(args, DEFAULT_WORLD_SIZE if args.world_size is None else args.world_size)
        except (ValueError, OSError) as error:
            return usage_error("torchair-plugin balance", str(error))
        return EXIT_OK
    try:
        routing, table, world_size, plan = _inputs(args)
        report = load_report(routing, table, world_size)
        if args.png:
            from torchair_plugin.eplb.plot import plot_rank_loads

            plot_rank_loads(report, args.png, notes=_notes(args, plan))
    # RuntimeError: the op's own argument checks (torch._check), should any input slip past ours.
    except (ValueError, ImportError, OSError, RuntimeError) as error:
        return usage_error("torchair-plugin balance", str(error))
    if args.json:
        result = report.to_dict()
        result["eplb_table"] = table.tolist()
        if plan is not None:
            result["plan"] = {"balance_mode": plan.balance_mode, "modelled_balancedness": plan.balancedness}
        print(json.dumps(result))
    else:
        print(format_report(report))
        if plan is not None:
            print(f"table planned for balance_mode {plan.balance_mode}; modelled balancedness {plan.balancedness:.4f}")
        if args.png:
            print(f"wrote {args.png}")
    return EXIT_OK
