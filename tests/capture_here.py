"""Whether GE graph capture works in this test process, found by trying it as users do."""

import pytest

from torchair_plugin.testing import CannLessUnavailable, current_mode, import_torchair


def capture_possible() -> bool:
    try:
        import_torchair()
    except CannLessUnavailable:
        return False
    return True


def aclgraph_capture_possible(mode: str = "reduce-overhead") -> bool:
    """Whether ``mode`` can be captured here (the real torch_npu loads, and has the mode)."""
    from torchair_plugin.testing.aclgraph_capture import mode_problem

    return capture_possible() and mode_problem(mode) is None


uses_stub_cache = pytest.mark.skipif(
    not current_mode().cann_less, reason="the stub cache is used only where torch-npu is installed without CANN"
)
