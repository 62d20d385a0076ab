"""The compiled CPU kernel (``_cpu_kernel.c``): built on first use, cached, loaded with ctypes.

The reference kernel calls :func:`update_expert` for CPU tensors and falls back to its Python
path whenever this returns None: no C compiler, an unusable cache directory, a failed build, or
``TORCHAIR_PLUGIN_CPU_KERNEL=python``. Nothing here raises for those; :func:`status` says which.

The library is cached under the plugin's cache directory by the hash of its source and the
compiler command, written to a temporary name and renamed into place (processes building it at
once each produce a whole file), and loaded only if its recorded sha256 still matches: a damaged
file is rebuilt, never mapped (a truncated shared library faults on load).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch

from torchair_plugin import _environment

KERNEL_VAR = "TORCHAIR_PLUGIN_CPU_KERNEL"  # "python": never build or use the compiled kernel
_SOURCE = Path(__file__).with_name("_cpu_kernel.c")
_LIBRARY = "libtorchair_plugin_cpu_kernel.so"
_FLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-strict-aliasing")
_SCALES_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_lock = threading.Lock()
_state = {"loaded": False, "function": None, "status": "not loaded yet"}


def _library_path(root: Path, cc) -> Path:
    digest = hashlib.sha256(_SOURCE.read_bytes())
    digest.update("\0".join([*cc, *_FLAGS]).encode())
    return root / "cpu-kernel" / digest.hexdigest()[:16] / _LIBRARY


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(cc, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=library.parent, suffix=".so.tmp")
    os.close(handle)
    try:
        subprocess.run([*cc, *_FLAGS, "-o", temporary, str(_SOURCE)], check=True, capture_output=True, timeout=120)
        digest = _sha256(Path(temporary))
        os.replace(temporary, library)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    library.with_suffix(".sha256").write_text(digest)


def _whole(library: Path) -> bool:
    try:
        return library.with_suffix(".sha256").read_text().strip() == _sha256(library)
    except OSError:
        return False


# torchair_plugin_update_expert_packed's one argument: its 16 arguments as native int64s,
# pointers as addresses (0 for NULL). One bytes argument through ctypes costs about a third of
# 16 typed ones (~1 us against ~3 us here), and a fresh bytes object per call is thread-safe.
pack_arguments = struct.Struct("=16q").pack


def _declare(function) -> None:
    function.argtypes = (ctypes.c_char_p,)
    function.restype = ctypes.c_int


def _load():
    if os.environ.get(KERNEL_VAR, "").strip().lower() == "python":
        return None, f"not used: {KERNEL_VAR}=python"
    cc = _environment.c_compiler()
    if cc is None:
        return None, "not built: no C compiler (set CC or install gcc)"
    library = _library_path(_environment.cache_root(), cc)
    try:
        if not _whole(library):
            _build(cc, library)
        loaded = ctypes.CDLL(str(library))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        return None, f"not built: {error} {detail.decode(errors='replace')[-500:]}".strip()
    function = loaded.torchair_plugin_update_expert_packed
    _declare(function)
    return function, f"compiled ({library})"


def function():
    """The loaded C function, building it on first use; None when it is not available."""
    if not _state["loaded"]:
        with _lock:
            if not _state["loaded"]:
                _state["function"], _state["status"] = _load()
                _state["loaded"] = True
    return _state["function"]


def status() -> str:
    """Whether the compiled kernel is in use, in words (loads it if not tried yet)."""
    function()
    return _state["status"]


def update_expert(kernel, expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
                  local_rank_id, world_size, balance_mode) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(balanced_expert_ids, mask) from the C kernel, or None for values the NPU would read out of
    bounds with (the caller diagnoses them). Arguments are checked CPU tensors."""
    expert_ids, eplb_table = expert_ids.contiguous(), eplb_table.contiguous()
    balanced = torch.empty_like(expert_ids)
    keep = torch.empty_like(expert_ids, dtype=torch.bool)
    bs, k = expert_ids.shape
    experts, f = eplb_table.shape
    if expert_scales is None:
        scales = threshold = active = None
        scales_kind = 0
    else:
        scales, threshold = expert_scales.contiguous(), pruning_threshold.contiguous()
        active = None if active_mask is None else active_mask.contiguous()
        scales_kind = _SCALES_KIND[scales.dtype]
    status = kernel(pack_arguments(
        expert_ids.data_ptr(), expert_ids.dtype == torch.int64, bs, k,
        eplb_table.data_ptr(), experts, f,
        0 if scales is None else scales.data_ptr(), scales_kind,
        0 if threshold is None else threshold.data_ptr(),
        0 if active is None else active.data_ptr(),
        local_rank_id, world_size, balance_mode,
        balanced.data_ptr(), keep.data_ptr(),
    ))
    return (balanced, keep) if status == 0 else None
