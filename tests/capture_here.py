"""Whether GE graph capture works in this test process, found by trying it as users do."""

import pytest

from torchair_plugin.testing import CannLessUnavailable, Mode, current_mode, import_torchair


def capture_possible() -> bool:
    try:
        import_torchair()
    except CannLessUnavailable:
        return False
    return True


uses_stub_cache = pytest.mark.skipif(
    not current_mode().cann_less, reason="the stub cache is used only where torch-npu is installed without CANN"
)
