"""What the op does to load: tokens per physical expert and per rank, as dispatch would send them.

The mapping is the op's own: every source rank's routing goes through
``torch.ops.npu.npu_moe_update_expert`` with that rank's ``local_rank_id`` (nothing here
re-implements it). Three scenarios: no redundancy, and balance_mode 0 and 1 on the full table.

No redundancy is a fixed baseline that does not depend on the table: E logical experts, one
physical copy each, in the usual expert-parallel layout (expert e on rank e * world_size // E, i.e.
E / world_size consecutive experts per rank). Physical expert p of P lives on rank
p * world_size // P, which is p // (P / world_size), the dispatch convention, when world_size
divides P (always so for a valid table).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

import numpy as np
import torch

from torchair_plugin import limits
from torchair_plugin.validate import check_int, validate_eplb_table, validate_expert_ids

NO_REDUNDANCY = "no redundancy"
SCENARIOS = (NO_REDUNDANCY, "balance_mode 0", "balance_mode 1")


def scenario_table(eplb_table: torch.Tensor, scenario: str) -> tuple:
    """(table, balance_mode) the op is called with in a scenario: no redundancy is the identity
    table (expert e on physical expert e, count 1), whatever ``eplb_table`` plans."""
    if scenario == NO_REDUNDANCY:
        experts = torch.arange(eplb_table.shape[0], dtype=torch.int32, device=eplb_table.device)
        return torch.stack([torch.ones_like(experts), experts], 1), 0
    return eplb_table, SCENARIOS.index(scenario) - 1


def physical_ranks(num_physical: int, world_size: int) -> np.ndarray:
    """Rank of every physical expert (P,): consecutive blocks, as even as P allows."""
    return np.arange(num_physical) * world_size // num_physical


def source_expert_tokens(
    expert_ids: torch.Tensor, eplb_table: torch.Tensor, local_rank_id: int, world_size: int, scenario: str
) -> torch.Tensor:
    """Tokens one source rank sends to each physical expert (P,) int64 in a scenario.

    ``expert_ids`` (tokens, K) go through the op in batches of at most 512 rows (its BS limit),
    as a serving engine would call it; balance_mode 1's row index restarts in every batch.
    """
    table, mode = scenario_table(eplb_table, scenario)
    total = int(table[:, 0].sum())
    sent = torch.zeros(total, dtype=torch.int64)
    for batch in torch.split(expert_ids, limits.MAX_BS):
        physical, _ = torch.ops.npu.npu_moe_update_expert(
            batch, table, local_rank_id=local_rank_id, world_size=world_size, balance_mode=mode
        )
        sent += torch.bincount(physical.reshape(-1).long().cpu(), minlength=total)
    return sent


def imbalance(rank_tokens) -> float:
    """max / mean of the per-rank load (1.0 is perfect; 1.0 when nothing is sent)."""
    tokens = np.asarray(rank_tokens, dtype=np.float64)
    mean = tokens.mean()
    return float(tokens.max() / mean) if mean > 0 else 1.0


@dataclasses.dataclass(frozen=True)
class ScenarioLoad:
    name: str
    expert_tokens: np.ndarray  # (P,)
    rank_tokens: np.ndarray  # (world_size,)

    @property
    def imbalance(self) -> float:
        return imbalance(self.rank_tokens)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    world_size: int
    slots_per_rank: int
    scenarios: Sequence[ScenarioLoad]
    num_experts: int  # logical
    tokens: int  # over all source ranks
    top_k: int

    def to_dict(self) -> Dict:
        return {
            "world_size": self.world_size,
            "slots_per_rank": self.slots_per_rank,
            "num_experts": self.num_experts,
            "tokens": self.tokens,
            "top_k": self.top_k,
            "scenarios": {
                s.name: {
                    "imbalance": s.imbalance,
                    "rank_tokens": s.rank_tokens.tolist(),
                    "expert_tokens": s.expert_tokens.tolist(),
                }
                for s in self.scenarios
            },
        }


def _routing_per_rank(routing, world_size: int, num_experts: int) -> List[torch.Tensor]:
    ranks = list(routing)
    if len(ranks) != world_size:
        raise ValueError(f"routing must hold one (tokens, K) tensor per rank: {world_size}, got {len(ranks)}")
    for rank, ids in enumerate(ranks):
        if not isinstance(ids, torch.Tensor) or ids.dtype not in limits.INPUT_DTYPES["expert_ids"] or ids.dim() != 2:
            got = f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"routing[{rank}] must be an int32/int64 tensor (tokens, K), got {got}")
        max_k = min(limits.MAX_K, num_experts)
        if ids.shape[0] == 0 or not 0 < ids.shape[1] <= max_k:
            raise ValueError(
                f"routing[{rank}] must have tokens > 0 and K in [1, min({limits.MAX_K}, moe_expert_num)={max_k}], "
                f"got shape {tuple(ids.shape)}"
            )
    return ranks


def load_report(routing, eplb_table: torch.Tensor, world_size: int) -> LoadReport:
    """Tokens per physical expert and per rank for every scenario.

    ``routing``: top-K logical ids per token for each source rank, a (world_size, tokens, K)
    tensor or a sequence of world_size (tokens_r, K) tensors. world_size in [2, 768] and a table
    valid for balance_mode 0 (the report runs both modes).
    """
    world_size = check_int("world_size", world_size, limits.MIN_WORLD_SIZE, limits.MAX_WORLD_SIZE)
    total = validate_eplb_table(eplb_table, world_size)
    if eplb_table.dim() != 2:
        raise ValueError(f"eplb_table must be one layer's (moe_expert_num, F), got shape {tuple(eplb_table.shape)}")
    ranks = _routing_per_rank(routing, world_size, eplb_table.shape[0])
    for rank, ids in enumerate(ranks):
        try:
            validate_expert_ids(ids, eplb_table.shape[0])
        except ValueError as error:
            raise ValueError(f"routing[{rank}]: {error}") from None
    scenarios = []
    for name in SCENARIOS:
        per_rank = [source_expert_tokens(ids, eplb_table, rank, world_size, name) for rank, ids in enumerate(ranks)]
        expert = torch.stack(per_rank).sum(0).numpy()
        rank_tokens = np.bincount(physical_ranks(expert.shape[0], world_size), weights=expert, minlength=world_size)
        scenarios.append(ScenarioLoad(name, expert, rank_tokens.astype(np.int64)))
    tokens = sum(int(ids.shape[0]) for ids in ranks)
    return LoadReport(
        world_size, total // world_size, tuple(scenarios), int(eplb_table.shape[0]), tokens, int(ranks[0].shape[1])
    )


def format_report(report: LoadReport) -> str:
    """A text table: one row per rank, one column per scenario, then max / mean / imbalance."""
    names = [s.name for s in report.scenarios]
    width = max(12, *(len(n) for n in names))
    header = f"{'rank':>8} " + " ".join(f"{n:>{width}}" for n in names)
    lines = [
        f"tokens per rank (world_size {report.world_size}; no redundancy: {report.num_experts} experts, "
        f"expert e on rank e * world_size // {report.num_experts}; the table: {report.slots_per_rank} "
        f"physical experts per rank)",
        header,
        "-" * len(header),
    ]
    for rank in range(report.world_size):
        lines.append(f"{rank:>8} " + " ".join(f"{int(s.rank_tokens[rank]):>{width}}" for s in report.scenarios))
    lines.append("-" * len(header))
    lines.append(f"{'max':>8} " + " ".join(f"{int(s.rank_tokens.max()):>{width}}" for s in report.scenarios))
    lines.append(f"{'mean':>8} " + " ".join(f"{s.rank_tokens.mean():>{width}.1f}" for s in report.scenarios))
    lines.append(f"{'max/mean':>8} " + " ".join(f"{s.imbalance:>{width}.3f}" for s in report.scenarios))
    idle = [f"{s.name}: {int((s.expert_tokens == 0).sum())}" for s in report.scenarios]
    lines.append("physical experts receiving no tokens: " + ", ".join(idle))
    return "\n".join(lines)
