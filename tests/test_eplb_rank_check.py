"""Same table on every rank: 4 processes on gloo (torch.multiprocessing.spawn), a digest
all-gather naming the ranks that differ, and StableEplbTable.update writing only when all agree."""

import json

import eplb_rank_worker
import pytest
import torch
import torch.multiprocessing as mp
from eplb_rank_worker import NEW, TABLE

from torchair_plugin.eplb import check_same_table, table_digest

WORLD_SIZE = 4


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(eplb_rank_worker.run, args=(WORLD_SIZE, str(out)), nprocs=WORLD_SIZE, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def test_identical_tables_pass_with_one_digest(seen):
    digest = table_digest(torch.tensor(TABLE, dtype=torch.int32))
    assert [s["same"] for s in seen] == [{"ok": digest}] * WORLD_SIZE


def test_the_differing_rank_is_named_on_every_rank(seen):
    for s in seen:
        outcome = s["rank 2 differs"]
        assert "eplb_table differs between ranks: rank(s) [0, 1, 3] hold digest" in outcome["mismatch"]
        assert "rank(s) [2] hold" in outcome["mismatch"]
        assert outcome["groups"] == [[0, 1, 3], [2]]


def test_update_together_writes_on_every_rank(seen):
    for s in seen:
        assert s["update together"] == {"ok": 1, "table": NEW}


def test_plans_that_differ_are_written_nowhere(seen):
    for s in seen:
        outcome = s["ranks 1 and 3 plan differently"]
        assert "rank(s) [1, 3] hold" in outcome["mismatch"] and outcome["table"] == NEW


def test_an_invalid_plan_on_one_rank_stops_every_rank(seen):
    for rank, s in enumerate(seen):
        outcome = s["rank 3 plans an invalid table"]
        assert outcome["table"] == NEW  # nobody wrote
        if rank == 3:  # its own reason, with the row
            assert "physical expert 0 appears more than once in eplb_table, at [1, 1] and [1, 2]" in outcome["invalid"]
        else:
            assert outcome["refused"] == [3] and "rank(s) [3] refused their new eplb_table" in outcome["mismatch"]


def test_a_subgroup_names_global_ranks(seen):
    for s in seen[1:]:
        outcome = s["subgroup, rank 3 differs"]
        assert outcome["groups"] == [[1, 2], [3]]
    assert "subgroup, rank 3 differs" not in seen[0]


def test_digests_tell_dtype_shape_and_values_apart():
    table = torch.tensor(TABLE, dtype=torch.int32)
    digests = {table_digest(t) for t in (table, table.long(), table[:5], table.flip(0), table.clone())}
    assert len(digests) == 4
    with pytest.raises(ValueError, match="table must be a torch.Tensor, got list"):
        table_digest(TABLE)


def test_the_check_needs_a_process_group():
    with pytest.raises(ValueError, match="check_same_table needs an initialised torch.distributed process group"):
        check_same_table(torch.tensor(TABLE, dtype=torch.int32))
