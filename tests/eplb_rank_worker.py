"""One rank of the rank-consistency scenarios (run by test_eplb_rank_check through
torch.multiprocessing.spawn on gloo); writes what it saw to <out>/rank<r>.json."""

import torchair_plugin  # noqa: F401  (first: a spawned child imports this module before torch)
import json
import os

import torch
import torch.distributed as dist

from torchair_plugin.eplb import RankMismatchError, StableEplbTable, check_same_table

TABLE = [[2, 0, 4], [1, 1, -1], [1, 2, -1], [2, 3, 6], [1, 5, -1], [1, 7, -1]]
NEW = [[1, 4, -1], [2, 0, 1], [1, 2, -1], [2, 3, 6], [1, 5, -1], [1, 7, -1]]
OTHER = [[1, 0, -1], [2, 1, 4], [1, 2, -1], [2, 3, 6], [1, 5, -1], [1, 7, -1]]
INVALID = [[1, 4, -1], [2, 0, 0], [1, 2, -1], [2, 3, 6], [1, 5, -1], [1, 7, -1]]  # physical 0 twice


def _outcome(call):
    try:
        return {"ok": call()}
    except RankMismatchError as error:
        return {"mismatch": str(error), "groups": sorted(error.groups.values()), "refused": error.refused}
    except ValueError as error:
        return {"invalid": str(error)}


def _update(stable, new, group=None):
    def call():
        stable.update(new, group=group)
        return stable.version

    result = _outcome(call)
    result["table"] = stable.tensor[:, :3].tolist()
    return result


def run(rank, world_size, out):
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world_size)
    seen = {}
    same = torch.tensor(TABLE, dtype=torch.int32)
    seen["same"] = _outcome(lambda: check_same_table(same))
    seen["rank 2 differs"] = _outcome(
        lambda: check_same_table(torch.tensor(OTHER if rank == 2 else TABLE, dtype=torch.int32))
    )
    stable = StableEplbTable(TABLE, world_size)
    seen["update together"] = _update(stable, NEW)
    seen["ranks 1 and 3 plan differently"] = _update(stable, OTHER if rank in (1, 3) else TABLE)
    seen["rank 3 plans an invalid table"] = _update(stable, INVALID if rank == 3 else TABLE)
    subgroup = dist.new_group([1, 2, 3])
    if rank in (1, 2, 3):
        seen["subgroup, rank 3 differs"] = _outcome(
            lambda: check_same_table(torch.tensor(OTHER if rank == 3 else TABLE, dtype=torch.int32), group=subgroup)
        )
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    # Leave without freeing the groups. On torch < 2.8, freeing a gloo group can deadlock for good:
    # ~ProcessGroupGloo waits for its worker thread while holding the GIL, and that thread needs the
    # GIL to free the last all_gather's tensors (pytorch/pytorch#154976 released the GIL there). It
    # hung one rank of the 2.6 matrix row in the subgroup's destructor. The results are written.
    os._exit(0)
