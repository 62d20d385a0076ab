"""Count the tokens each physical expert receives, on the device, inside a compiled graph.

The recorder takes the op's outputs as they are (``balanced_expert_ids`` (BS, K) physical ids
and ``balanced_active_mask`` (BS, K)) and adds them into a fixed-size buffer in place with one
``index_add_``: no host sync, no data-dependent shape (a boolean index would be both), no Python
branch on a tensor, so Dynamo keeps one graph and torchair lowers it next to MoeUpdateExpert
(its converter for ``index_add`` emits ``InplaceIndexAdd``). Pruned pairs and inactive rows add
0 (the mask is the source of the add, not a filter), and so does everything while the device
flag ``enabled`` is 0: the flag is multiplied in, so switching it never recompiles.

The buffer keeps a window of W steps (vLLM's ``expert_load_window``): step s's counts go to slot
``s % W``; :meth:`~ExpertLoadRecorder.step` moves to the next slot and clears it, also without a
sync, so ``window_load()`` always holds the last W steps.
"""

from __future__ import annotations

from typing import Optional

import torch

from torchair_plugin import limits
from torchair_plugin.validate import check_int

MAX_WINDOW = 1 << 16
"""Slots in a window: a rebalance every few thousand steps needs no more."""
_COUNT_DTYPES = (torch.int32, torch.int64, torch.float32)


class ExpertLoadRecorder(torch.nn.Module):
    """Tokens received per physical expert, for ``num_layers`` layers (None: one, no layer axis)
    over a window of ``window`` steps.

    Buffers (move with the model's ``.to()``):
    - ``counts``: (window, P) or (window, L, P), ``dtype`` (int32 by default: the NPU's
      ``InplaceIndexAdd`` takes it, and one step's tokens per expert are far below 2**31);
    - ``enabled``: () of ``dtype``, 1 records, 0 adds zeros;
    - ``slot``: () int64, the window slot the current step records into.
    """

    counts: torch.Tensor
    enabled: torch.Tensor
    slot: torch.Tensor

    def __init__(
        self,
        num_physical: int,
        *,
        num_layers: Optional[int] = None,
        window: int = 1,
        enabled: bool = True,
        device=None,
        dtype: torch.dtype = torch.int32,
    ):
        super().__init__()
        self.num_physical = check_int("num_physical", num_physical, 1, limits.MAX_EXPERTS)
        self.num_layers = None if num_layers is None else check_int("num_layers", num_layers, 1)
        self.window = check_int("window", window, 1, MAX_WINDOW)
        if dtype not in _COUNT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(str, _COUNT_DTYPES))}, got {dtype}")
        layers = () if self.num_layers is None else (self.num_layers,)
        self.register_buffer(
            "counts", torch.zeros((self.window, *layers, self.num_physical), dtype=dtype, device=device)
        )
        self.register_buffer("enabled", torch.tensor(int(bool(enabled)), dtype=dtype, device=device))
        self.register_buffer("slot", torch.zeros((), dtype=torch.int64, device=device))

    def _layer_offset(self, layer: Optional[int]) -> int:
        if self.num_layers is None:
            if layer is not None:
                raise ValueError(f"layer must be None for a recorder without layers (num_layers=None), got {layer!r}")
            return 0
        return check_int("layer", layer, 0, self.num_layers - 1) * self.num_physical

    def record(
        self,
        balanced_expert_ids: torch.Tensor,
        balanced_active_mask: Optional[torch.Tensor] = None,
        *,
        layer: Optional[int] = None,
    ) -> None:
        """Add one call's tokens: each (row, k) pair whose mask is True adds 1 to its physical
        expert. ``balanced_active_mask`` None counts every pair: pass it whenever the op pruned
        (the NPU leaves the mask unwritten when the op had no pruning inputs). ``layer`` (a Python
        int, fixed per call site) picks the layer row. The ids must be physical ids in [0, P),
        which the op returns for a valid table."""
        ids = balanced_expert_ids.reshape(-1)
        if balanced_active_mask is None:
            source = self.enabled.expand(ids.shape[0])
        else:
            if balanced_active_mask.shape != balanced_expert_ids.shape:
                raise ValueError(
                    f"balanced_active_mask.shape must equal balanced_expert_ids.shape "
                    f"{tuple(balanced_expert_ids.shape)}, got {tuple(balanced_active_mask.shape)}"
                )
            source = balanced_active_mask.reshape(-1).to(self.counts.dtype) * self.enabled
        slot_size = self.counts[0].numel()
        index = ids.to(torch.int64) + (self.slot * slot_size + self._layer_offset(layer))
        self.counts.view(-1).index_add_(0, index, source)

    forward = record

    def step(self) -> None:
        """Move to the next window slot and clear it (tensor ops only: callable in or out of a graph)."""
        self.slot.copy_((self.slot + 1) % self.window)
        keep = torch.arange(self.window, device=self.slot.device) != self.slot
        self.counts.mul_(keep.to(self.counts.dtype).view(-1, *([1] * (self.counts.dim() - 1))))

    def set_enabled(self, on: bool) -> None:
        """Switch recording on or off (writes the device flag; no recompile, no sync)."""
        self.enabled.fill_(int(bool(on)))

    def reset(self) -> None:
        """Clear every slot and start again at slot 0."""
        self.counts.zero_()
        self.slot.zero_()

    def window_load(self) -> torch.Tensor:
        """Tokens per physical expert over the window: (P,) or (L, P), int64, on the buffer's device."""
        return self.counts.sum(0, dtype=torch.int64)
