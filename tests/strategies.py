"""Hypothesis strategies for valid npu_moe_update_expert inputs over the op's whole range.

Structure (modes, sizes, dtypes, optional inputs, mask cut points) is drawn by hypothesis so it
shrinks; bulk values come from a torch generator seeded by hypothesis, which keeps BS=512 x
moe_expert_num=1024 draws fast.
"""

import torch
from hypothesis import strategies as st

from torchair_plugin import limits

SCALE_DTYPES = limits.INPUT_DTYPES["expert_scales"]


@st.composite
def update_expert_inputs(draw, max_bs=512, max_f=64):
    mode = draw(st.sampled_from([0, 1]))
    if mode == 0:
        world_size = draw(st.one_of(st.integers(2, 16), st.integers(2, 768)))
        local_rank_id = draw(st.integers(0, world_size - 1))
        f_high = min(world_size + 1, max_f)
    else:
        world_size = draw(st.sampled_from([-1, 8, 1000]))  # mode 1 ignores it
        local_rank_id = draw(st.sampled_from([-1, 0, 5]))
        f_high = max_f
    k = draw(st.integers(1, 16))
    bs = draw(st.integers(1, max_bs))
    num_experts = draw(st.one_of(st.integers(k, 64), st.integers(k, 1024)))
    f = draw(st.integers(2, f_high))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    counts = torch.randint(1, f, (num_experts,), generator=gen, dtype=torch.int32)
    if draw(st.booleans()):  # many single-replica experts, as in real tables
        counts[torch.rand(num_experts, generator=gen) < 0.7] = 1
    table = torch.randint(0, 1024, (num_experts, f), generator=gen, dtype=torch.int32)
    table[:, 0] = counts
    ids_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    expert_ids = torch.randint(0, num_experts, (bs, k), generator=gen).to(ids_dtype)

    kwargs = dict(local_rank_id=local_rank_id, world_size=world_size, balance_mode=mode)
    if draw(st.booleans()):
        scale_dtype = draw(st.sampled_from(SCALE_DTYPES))
        scales = torch.rand(bs, k, generator=gen).to(scale_dtype)
        if draw(st.booleans()):
            scales = scales.sort(dim=1, descending=True).values
        if draw(st.booleans()):
            # Thresholds at the boundary s[j] / sum(s): ties and 1-ulp misses, where the float32
            # order of operations decides the answer.
            s32 = scales.float()
            threshold = (s32[0] / s32[0].sum()).contiguous()
        else:
            threshold = torch.rand(k, generator=gen) * (2.0 / k)
        if draw(st.booleans()):
            threshold = threshold.view(1, k)
        kwargs.update(expert_scales=scales, pruning_threshold=threshold)
        if draw(st.booleans()):
            cut = draw(st.integers(0, bs))
            active = torch.zeros(bs, dtype=torch.bool)
            active[:cut] = True
            kwargs["active_mask"] = active
    return expert_ids, table, kwargs
