"""torchair-plugin: npu_moe_update_expert as a first-class TorchAir graph-mode op."""

from torchair_plugin import _environment

# Must run before the first ``import torch`` (see _environment.prepare_torch_import).
_environment.prepare_torch_import()
