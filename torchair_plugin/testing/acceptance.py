"""Acceptance of the native NPU kernel against the reference kernel: a corpus and a comparison.

On a real Ascend box (``pytest -m npu tests/npu``) the native kernel runs on the NPU and is
compared with the plugin's reference kernel on CPU, element by element, over a randomized but
seeded corpus: both balance modes, int32 and int64 ids, every scales dtype, pruning thresholds
placed exactly at the keep/prune boundary, BS 1..512, K 1..16. Off the NPU the same comparison
runs in CI with the reference kernel on both sides (and with deliberately wrong kernels, to show
that it catches them), so this code is never dead.

:func:`mismatch_report` is what a user sends back when the native kernel disagrees: the case's
seed and parameters (enough to rebuild its inputs with :func:`build_case`) and the first
differing elements.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from torchair_plugin import limits

SCALE_DTYPES = limits.INPUT_DTYPES["expert_scales"]
Kernel = Callable[..., Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Case:
    """One corpus entry; :func:`build_case` turns it into tensors, always the same ones."""

    seed: int
    bs: int
    k: int
    num_experts: int
    f: int
    balance_mode: int
    world_size: int
    local_rank_id: int
    ids_dtype: torch.dtype
    scales_dtype: Optional[torch.dtype]  # None: no pruning inputs
    with_active_mask: bool


def corpus(seed: int = 0, size: int = 200) -> Iterator[Case]:
    """``size`` cases covering both modes, every dtype, BS 1..512 and K 1..16 (edges included)."""
    rng = random.Random(seed)
    edges = [(1, 1), (512, 16), (1, 16), (512, 1)]
    for n in range(size):
        bs, k = edges[n] if n < len(edges) else (rng.randint(1, 512), rng.randint(1, 16))
        mode = n % 2
        world_size = rng.choice([2, 8, 16, 64, 768]) if mode == 0 else rng.choice([-1, 8])
        f = rng.randint(2, min(world_size + 1, 17)) if mode == 0 else rng.randint(2, 33)
        scales_dtype = [None, *SCALE_DTYPES][n % 4]
        yield Case(
            seed=rng.randrange(2**31),
            bs=bs,
            k=k,
            num_experts=rng.randint(k, 1024),
            f=f,
            balance_mode=mode,
            world_size=world_size,
            local_rank_id=rng.randrange(world_size) if mode == 0 else -1,
            ids_dtype=(torch.int32, torch.int64)[(n // 2) % 2],
            scales_dtype=scales_dtype,
            with_active_mask=scales_dtype is not None and n % 3 == 0,
        )


def build_case(case: Case) -> Tuple[tuple, Dict[str, object]]:
    """(positional args, keyword args) of the op for ``case``, on CPU."""
    gen = torch.Generator().manual_seed(case.seed)
    counts = torch.randint(1, case.f, (case.num_experts,), generator=gen, dtype=torch.int32)
    table = torch.randint(0, 1024, (case.num_experts, case.f), generator=gen, dtype=torch.int32)
    table[:, 0] = counts
    ids = torch.randint(0, case.num_experts, (case.bs, case.k), generator=gen).to(case.ids_dtype)
    kwargs: Dict[str, object] = dict(
        local_rank_id=case.local_rank_id, world_size=case.world_size, balance_mode=case.balance_mode
    )
    if case.scales_dtype is not None:
        scales = torch.rand(case.bs, case.k, generator=gen).to(case.scales_dtype)
        threshold = torch.rand(case.k, generator=gen) * 0.3
        # Put one threshold exactly on the boundary of row 0 (s[j] == t[j] * sum(s) in float32):
        # the kernel keeps it (equality keeps); a kernel comparing with > would prune it.
        row = scales[0].float()
        total = row.sum()
        if total > 0:
            threshold[0] = row[0] / total
        kwargs.update(expert_scales=scales, pruning_threshold=threshold)
        if case.with_active_mask:
            cut = int(torch.randint(0, case.bs + 1, (1,), generator=gen))
            kwargs["active_mask"] = torch.arange(case.bs) < cut
    return (ids, table), kwargs


@dataclass
class Mismatch:
    case: Case
    output: str  # "balanced_expert_ids" | "balanced_active_mask" | "error"
    elements: List[Tuple[int, int, object, object]] = field(default_factory=list)  # (i, j, expected, got)
    error: str = ""


def _move(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def compare(native: Kernel, reference: Kernel, cases, device: str = "cpu", max_elements: int = 5) -> List[Mismatch]:
    """Run both kernels on every case (``native`` on ``device``); return what differs."""
    found = []
    for case in cases:
        args, kwargs = build_case(case)
        expected = reference(*args, **kwargs)
        try:
            got = native(*(_move(a, device) for a in args), **{k: _move(v, device) for k, v in kwargs.items()})
            got = (got[0].cpu(), got[1].cpu())
        except Exception as exc:  # a native refusal of a valid case is a mismatch too
            found.append(Mismatch(case, "error", error=f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        for name, want, have in zip(("balanced_expert_ids", "balanced_active_mask"), expected, got):
            if want.dtype != have.dtype or want.shape != have.shape:
                found.append(
                    Mismatch(case, name, error=f"{have.dtype}{list(have.shape)} != {want.dtype}{list(want.shape)}")
                )
            elif not torch.equal(want, have):
                where = (want != have).nonzero().tolist()[:max_elements]
                found.append(Mismatch(case, name, [(i, j, want[i, j].item(), have[i, j].item()) for i, j in where]))
    return found


def mismatch_report(mismatches: List[Mismatch]) -> str:
    """The text to send back: each failing case (rebuildable with build_case) and its first differences."""
    if not mismatches:
        return "native kernel agrees with the reference kernel on every case"
    lines = [
        f"{len(mismatches)} mismatching case(s); rebuild inputs with "
        "torchair_plugin.testing.acceptance.build_case(Case(...)):"
    ]
    for m in mismatches:
        lines.append(f"- {m.case!r}: {m.output}")
        lines.extend(f"    [{i}, {j}] expected {want}, got {have}" for i, j, want, have in m.elements)
        if m.error:
            lines.append(f"    {m.error}")
    return "\n".join(lines)
