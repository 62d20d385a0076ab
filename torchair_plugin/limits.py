"""The NPU kernel's limits (host tiling of MoeUpdateExpert), in one place."""

import torch

MAX_BS = 512  # expert_ids.size(0) in (0, 512]
MAX_K = 16  # expert_ids.size(1) in (0, 16]
MAX_EXPERTS = 1024  # eplb_table.size(0) in (0, 1024]; also the bound on the sum of counts
MIN_WORLD_SIZE = 2  # balance_mode 0 only
MAX_WORLD_SIZE = 768
MODE1_MAX_F = MAX_WORLD_SIZE + 1  # F bound when balance_mode == 1 ignores world_size
BALANCE_MODES = (0, 1)

EXPERT_IDS_DTYPES = (torch.int32, torch.int64)
EPLB_TABLE_DTYPES = (torch.int32,)
EXPERT_SCALES_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
PRUNING_THRESHOLD_DTYPES = (torch.float32,)
ACTIVE_MASK_DTYPES = (torch.bool,)
