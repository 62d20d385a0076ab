"""npu_moe_update_expert eagerly on CPU: logical -> physical expert ids, and pruning.

    python examples/eager_cpu.py

4 ranks with 2 physical expert slots each (8 slots) hold 6 logical experts; the hot experts 0
and 3 have two replicas. The same call runs unchanged on an Ascend NPU with torch_npu.
"""

# First: registers torch.ops.npu.npu_moe_update_expert, and on a machine with torch-npu but no
# CANN makes `import torch` work (it turns off torch's autoload of the torch_npu backend).
import torchair_plugin
import torch
from torchair_plugin.eplb import table_from_phy2log

WORLD_SIZE = 4

# Physical slot j holds logical expert phy2log[j]; slots 2j and 2j+1 live on rank j.
phy2log = [0, 1, 2, 3, 0, 4, 3, 5]
eplb_table = table_from_phy2log(phy2log, WORLD_SIZE)  # validated: safe to hand to the NPU
print("eplb_table (count, replicas..., padding):")
print(eplb_table)

expert_ids = torch.tensor([[0, 3, 1], [3, 0, 5], [2, 0, 4]])  # top-3 logical experts of 3 tokens
expert_scales = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.45, 0.05], [0.7, 0.2, 0.1]])
pruning_threshold = torch.tensor([0.0, 0.0, 0.1])  # drop the 3rd expert below 10% of the token's weight
active_mask = torch.tensor([True, True, False])  # the last row is padding

for mode in (0, 1):
    physical, keep = torchair_plugin.npu_moe_update_expert(
        expert_ids,
        eplb_table,
        expert_scales=expert_scales,
        pruning_threshold=pruning_threshold,
        active_mask=active_mask,
        local_rank_id=3,
        world_size=WORLD_SIZE,
        balance_mode=mode,
    )
    print(f"balance_mode {mode}: physical ids {physical.tolist()}, kept {keep.tolist()}")

# Mode 0: rank 3 is in the second group of ceil(4 / 2) = 2 ranks, so it always takes the second
# replica (expert 0 -> slot 4, expert 3 -> slot 6). Mode 1: row i takes replica i % count + 1.
# Pruning: row 0 keeps its 3rd expert (0.1 is not below 10% of 1.0: equality keeps), row 1
# drops it (0.05 < 0.1), row 2 is padding and keeps nothing. The mapping ignores the masks.
