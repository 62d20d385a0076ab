"""torchair-plugin: npu_moe_update_expert as a first-class TorchAir graph-mode op.

``import torchair_plugin`` makes ``torch.ops.npu.npu_moe_update_expert`` callable, traceable and
compilable on any machine (see ``registration`` for what it installs given torch_npu).
"""

from torchair_plugin import environment

# Must run before the first ``import torch`` (see environment.prepare_torch_import).
environment.prepare_torch_import()

from torchair_plugin import registration as _registration  # noqa: E402
from torchair_plugin.ops import npu_moe_update_expert  # noqa: E402
from torchair_plugin.reference import npu_moe_update_expert_reference  # noqa: E402
from torchair_plugin.validate import (  # noqa: E402
    validate_active_mask,
    validate_eplb_table,
    validate_expert_ids,
)

__version__ = "0.2.0.dev0"

_registration.register()


def registration_report() -> dict:
    """Where the op's schema, fake kernel, device kernels and GE converter come from."""
    return _registration.register().sources()


__all__ = [
    "npu_moe_update_expert",
    "npu_moe_update_expert_reference",
    "registration_report",
    "validate_active_mask",
    "validate_eplb_table",
    "validate_expert_ids",
]
