"""The NPU kernel's limits (host tiling of MoeUpdateExpert), in one place."""

from typing import Tuple

import torch

MAX_BS = 512  # expert_ids.size(0) in (0, 512]
MAX_K = 16  # expert_ids.size(1) in (0, 16]
MAX_EXPERTS = 1024  # eplb_table.size(0) in (0, 1024]; also the bound on the sum of counts
MIN_WORLD_SIZE = 2  # balance_mode 0 only
MAX_WORLD_SIZE = 768
MODE1_MAX_F = MAX_WORLD_SIZE + 1  # F bound when balance_mode == 1 ignores world_size
BALANCE_MODES = (0, 1)

# Accepted dtypes per tensor input, keyed by the schema's names (a test checks they match).
INPUT_DTYPES = {
    "expert_ids": (torch.int32, torch.int64),
    "eplb_table": (torch.int32,),
    "expert_scales": (torch.float16, torch.bfloat16, torch.float32),
    "pruning_threshold": (torch.float32,),
    "active_mask": (torch.bool,),
}


def dtype_names(input_name: str) -> Tuple[str, ...]:
    """``("int32", "int64")`` for ``"expert_ids"``: the accepted dtypes as users spell them."""
    return tuple(str(dtype).replace("torch.", "") for dtype in INPUT_DTYPES[input_name])
