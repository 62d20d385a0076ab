"""The per-table-content memo of the reference kernel: never stale, whichever way the table is
written, and bounded. Every check compares the op's answer with the independent golden."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchair_plugin import _table_memo
from torchair_plugin.reference import python_reference

from golden import golden_update_expert

# The memo serves the Python kernel (the compiled CPU kernel derives nothing across calls).
op = python_reference
NUM_EXPERTS, F, BS, K = 16, 5, 8, 4
MODES = [dict(balance_mode=0, local_rank_id=3, world_size=4), dict(balance_mode=1)]


@pytest.fixture(autouse=True)
def fresh_memo():
    _table_memo.clear()
    yield
    _table_memo.clear()


def new_table(seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 1000, (NUM_EXPERTS, F), generator=gen, dtype=torch.int32)
    table[:, 0] = torch.randint(1, F, (NUM_EXPERTS,), generator=gen, dtype=torch.int32)
    return table


IDS = torch.arange(BS * K, dtype=torch.int32).view(BS, K) % NUM_EXPERTS


def assert_golden(table, kwargs):
    """The op on table equals the golden on the same table."""
    want = golden_update_expert(IDS, table, **kwargs)[0]
    assert op(IDS, table, **kwargs)[0].tolist() == want


def warm(table, kwargs):
    # Twice: the second call finds the table unchanged, so both modes have derived their values.
    for _ in range(2):
        assert_golden(table, kwargs)


def _replace_all(tensor, seed):
    tensor.copy_(new_table(seed))


# Each writer changes a physical id every expert uses and a replica count, without going
# through the tensor the op is called with.
def write_in_place(table):
    table[:, 1:] += 1
    table[3, 0] = 1


def write_through_a_view(table):
    table.view(-1)[1::F].add_(7)
    table[:, :1].fill_(1)


def write_with_copy_(table):
    _replace_all(table, seed=5)


def write_through_dot_data(table):
    _replace_all(table.data, seed=6)


def write_through_set_alias(table):
    alias = torch.empty(0, dtype=torch.int32).set_(
        table.untyped_storage(), table.storage_offset(), table.shape, table.stride())
    _replace_all(alias, seed=7)


def write_through_numpy(table):
    table.numpy()[:, 1:] = np.arange(NUM_EXPERTS * (F - 1)).reshape(NUM_EXPERTS, F - 1)


WRITERS = [write_in_place, write_through_a_view, write_with_copy_, write_through_dot_data,
           write_through_set_alias, write_through_numpy]


@pytest.mark.parametrize("kwargs", MODES, ids=["mode0", "mode1"])
@pytest.mark.parametrize("write", WRITERS)
def test_every_write_to_the_table_is_seen(write, kwargs):
    table = new_table()
    warm(table, kwargs)
    before = op(IDS, table, **kwargs)[0]
    write(table)
    assert_golden(table, kwargs)
    assert not torch.equal(op(IDS, table, **kwargs)[0], before)


def test_writes_that_torch_version_counter_misses_are_seen():
    # Why the memo compares contents: these writes leave the table's version counter as it was.
    for write in (write_through_dot_data, write_through_set_alias, write_through_numpy):
        table = new_table()
        warm(table, MODES[1])
        version = table._version
        write(table)
        assert table._version == version
        assert_golden(table, MODES[1])


@pytest.mark.parametrize("kwargs", MODES, ids=["mode0", "mode1"])
def test_a_new_tensor_on_the_same_memory_is_seen(kwargs):
    # A fresh tensor object (its own version counter, starting at 0) on memory whose content
    # changed: as a table freed and reallocated at the same address would be.
    array = new_table().numpy().copy()
    warm(torch.from_numpy(array), kwargs)
    array[:, 1:] += 11
    again = torch.from_numpy(array)
    assert again._version == 0
    assert_golden(again, kwargs)


def test_the_same_content_at_another_address_and_in_inference_mode_is_served():
    table = new_table()
    with torch.inference_mode():
        warm(table, MODES[1])
    warm(table.clone(), MODES[1])
    warm(table, MODES[1])  # values derived in inference mode serve calls outside it


def test_a_table_changed_before_every_call_is_never_stale():
    # Enough calls to go through the pause after repeated changes and come back out of it.
    table = new_table()
    for step in range(2 * _table_memo.PAUSE_CALLS + 8):
        table[step % NUM_EXPERTS, 1] += 1
        for kwargs in MODES:
            assert_golden(table, kwargs)
    for _ in range(3):  # stable again: the memo serves it again
        for kwargs in MODES:
            assert_golden(table, kwargs)
    memo = _table_memo.memo_for(table)
    assert memo is not None and memo.seen_unchanged and memo.values


def test_the_number_of_tables_remembered_is_bounded():
    tables = [new_table(seed) for seed in range(_table_memo.MAX_ENTRIES + 10)]
    for table in tables:
        warm(table, MODES[0])
    assert len(_table_memo._thread_state.cache.memos) <= _table_memo.MAX_ENTRIES
    assert_golden(tables[0], MODES[0])


def test_the_bytes_remembered_are_bounded(monkeypatch):
    # Room for the snapshots but not for balance_mode 1's per-row table: it is derived per call.
    monkeypatch.setattr(_table_memo, "MAX_BYTES", 4 * NUM_EXPERTS * F * 3)
    tables = [new_table(seed) for seed in range(5)]
    for table in tables * 2:
        warm(table, MODES[1])
    cache = _table_memo._thread_state.cache
    assert cache.nbytes <= _table_memo.MAX_BYTES
    assert cache.nbytes == sum(memo.nbytes for memo in cache.memos.values())
    assert not any(memo.values for memo in cache.memos.values())


def test_a_table_with_an_invalid_count_is_diagnosed_on_every_call():
    table = new_table()
    table[2, 0] = 0
    unused = IDS.clamp(max=1)  # experts 0 and 1 only: the invalid count is never read
    for _ in range(3):
        for kwargs in MODES:
            assert op(unused, table, **kwargs)[0].tolist() == golden_update_expert(unused, table, **kwargs)[0]
            with pytest.raises(ValueError, match=r"eplb_table\[2, 0\]"):
                op(IDS, table, **kwargs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WRITERS + [None]), st.sampled_from([0, 1])), min_size=1, max_size=12))
def test_any_sequence_of_writes_and_calls_matches_golden(steps):
    table = new_table()
    for write, mode in steps:
        if write is not None:
            write(table)
        assert_golden(table, MODES[mode])
