"""Whether the real torch_npu loads is probed in a child and remembered, but only when the answer
is about torch_npu: a child killed from outside or timed out is asked again next time."""

import dataclasses
import os
import signal

import pytest

from torchair_plugin.testing import _torchair_import as torchair_import
from torchair_plugin.testing import stub_libraries

pytestmark = pytest.mark.skipif(stub_libraries() is None, reason="needs the CANN stubs this session loaded")


@pytest.fixture
def private_entry(tmp_path):
    """This session's stub libraries, with the probe's record kept in a directory of the test's own."""
    return dataclasses.replace(stub_libraries(), directory=tmp_path)


def _probe_with(monkeypatch, entry, code):
    monkeypatch.setattr(torchair_import, "_PROBE_CODE", code)
    return torchair_import.probe_real_torch_npu(entry)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_child_killed_from_outside_is_not_remembered(monkeypatch, private_entry, sig):
    killed = _probe_with(monkeypatch, private_entry, f"import os; os.kill(os.getpid(), {int(sig)})")
    assert killed.loads is False and killed.transient and sig.name in killed.detail
    assert not (private_entry.directory / torchair_import._PROBE_FILE).exists()
    again = _probe_with(monkeypatch, private_entry, "print('torch_npu loaded')")
    assert again.loads is True and not again.transient  # asked again, and this answer is kept
    assert (private_entry.directory / torchair_import._PROBE_FILE).exists()


def test_a_timeout_is_not_remembered(monkeypatch, private_entry):
    monkeypatch.setattr(torchair_import, "PROBE_TIMEOUT_S", 1)
    slow = _probe_with(monkeypatch, private_entry, "import time; time.sleep(30)")
    assert slow.loads is False and slow.transient and "timed out" in slow.detail
    assert not (private_entry.directory / torchair_import._PROBE_FILE).exists()


def test_an_abort_inside_the_import_is_a_clean_no_and_is_remembered(monkeypatch, private_entry):
    aborted = _probe_with(monkeypatch, private_entry, "import os; print('what(): duplicated key'); os.abort()")
    assert aborted.loads is False and not aborted.transient and "what(): duplicated key" in aborted.detail
    remembered = _probe_with(monkeypatch, private_entry, "print('torch_npu loaded')")
    assert remembered == aborted  # read back from the record, the child not run again
    assert os.path.exists(private_entry.directory / torchair_import._PROBE_FILE)
