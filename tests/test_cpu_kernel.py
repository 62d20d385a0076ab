"""The compiled CPU kernel: bit-exact with the golden and the Python kernel, and every way of not
having it (no compiler, opted out, unusable or damaged cache) falls back to the Python kernel."""

import ctypes
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchair_plugin
from torchair_plugin import _cpu_kernel, _environment
from torchair_plugin.reference import python_reference

from golden import golden_update_expert

needs_compiler = pytest.mark.skipif(_environment.c_compiler() is None, reason="needs a C compiler")
# The tests that call into the library itself: not where the user opted out of it.
needs_compiled_kernel = pytest.mark.skipif(
    _environment.c_compiler() is None or os.environ.get(_cpu_kernel.KERNEL_VAR, "").strip().lower() == "python",
    reason=f"needs a C compiler, and {_cpu_kernel.KERNEL_VAR} not set to python")
ROOT = Path(__file__).resolve().parents[1]


@needs_compiled_kernel
def test_the_compiled_kernel_is_in_use_where_a_compiler_is():
    assert _cpu_kernel.status().startswith("compiled ("), _cpu_kernel.status()
    assert _cpu_kernel.function() is not None


@needs_compiled_kernel
def test_half_to_float_is_exact_for_every_half():
    widen = ctypes.CDLL(str(_loaded_library_path())).torchair_plugin_half_to_float
    widen.argtypes, widen.restype = (ctypes.c_uint16,), ctypes.c_float
    halves = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    want = halves.float().tolist()
    for bits, expected in enumerate(want):
        got = widen(bits)
        assert (math.isnan(got) and math.isnan(expected)) or (
            got == expected and math.copysign(1, got) == math.copysign(1, expected)), (bits, got, expected)


def _loaded_library_path() -> Path:
    status = _cpu_kernel.status()
    return Path(status[len("compiled ("):-1])


def _table(counts, f, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(-5, 1000, (len(counts), f), generator=gen, dtype=torch.int32)
    table[:, 0] = torch.tensor(counts, dtype=torch.int32)
    return table


@needs_compiler
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_balance_mode_1_remainder_for_every_row_and_count(ids_dtype):
    """row % count + 1 without a division: every row of the largest batch against every count up
    to the largest table's."""
    f = 769
    counts = list(range(1, f))
    table = _table(counts, f)
    ids = (torch.arange(512 * 16) % len(counts)).view(512, 16).to(ids_dtype)
    got, _ = torchair_plugin.npu_moe_update_expert(ids, table, balance_mode=1)
    want, _ = golden_update_expert(ids, table, balance_mode=1)
    assert got.dtype == ids_dtype and got.tolist() == want


@needs_compiler
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 9, 16])
def test_pruning_at_the_boundary_for_every_padded_width(scale_dtype, k):
    """Thresholds exactly at s[j] / sum(s) for each row: equality keeps, one ulp less drops; the
    sum's order decides. Non-finite scales and inactive rows included."""
    gen = torch.Generator().manual_seed(k)
    bs = 64
    scales = torch.rand(bs, k, generator=gen).to(scale_dtype)
    scales[3, 0] = float("inf")
    scales[4, -1] = float("nan")
    scales[5] = 0
    wide = scales.float()
    threshold = (wide[0] / wide[0].sum()).contiguous()
    active = torch.rand(bs, generator=gen) < 0.8
    table = _table([1] * k, 2)
    ids = torch.arange(k, dtype=torch.int32).repeat(bs, 1)
    kwargs = dict(expert_scales=scales, pruning_threshold=threshold, active_mask=active, balance_mode=1)
    got = torchair_plugin.npu_moe_update_expert(ids, table, **kwargs)
    want = golden_update_expert(ids, table, **kwargs)
    python = python_reference(ids, table, **kwargs)
    assert got[1].tolist() == want[1] == python[1].tolist()
    assert got[0].tolist() == want[0]


@needs_compiler
def test_bad_values_get_the_python_kernels_message():
    table = _table([2, 0, 9], 3)
    ids = torch.tensor([[0, 2]], dtype=torch.int32)
    for call in (torchair_plugin.npu_moe_update_expert, python_reference):
        with pytest.raises(ValueError, match=r"eplb_table\[2, 0\] \(replica count of logical expert 2\) must be in "
                           r"\[1, F-1=2\], got 9"):
            call(ids, table, local_rank_id=0, world_size=2)
    with pytest.raises(ValueError, match=r"expert_ids values must be in \[0, moe_expert_num=3\), got 3"):
        torchair_plugin.npu_moe_update_expert(torch.tensor([[0, 3]]), table, balance_mode=1)
    # The count of an expert nobody routes to is never read, as on the NPU.
    assert torchair_plugin.npu_moe_update_expert(ids[:, :1], table, local_rank_id=1, world_size=2)[0].tolist() == [
        [table[0, 2].item()]]


def _fresh_load(monkeypatch, tmp_path, **environ):
    monkeypatch.setenv(_environment.CACHE_DIR_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(_cpu_kernel.KERNEL_VAR, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return _cpu_kernel._load()


@needs_compiler
def test_a_build_is_cached_and_a_damaged_library_is_rebuilt(monkeypatch, tmp_path):
    function, status = _fresh_load(monkeypatch, tmp_path)
    assert function is not None and status.startswith("compiled (")
    library = Path(status[len("compiled ("):-1])
    assert library.is_relative_to(tmp_path / "cache")
    built_at = library.stat().st_mtime_ns
    assert _fresh_load(monkeypatch, tmp_path)[0] is not None and library.stat().st_mtime_ns == built_at
    # Truncated (mapping it would fault). A new file, as damage from outside would be: this
    # process has the old one mapped, and truncating a mapped file in place faults right here.
    damaged = library.with_name("damaged")
    damaged.write_bytes(library.read_bytes()[:100])
    os.replace(damaged, library)
    function, _ = _fresh_load(monkeypatch, tmp_path)
    assert function is not None and library.stat().st_size > 100


def test_no_compiler_falls_back_quietly(monkeypatch, tmp_path):
    monkeypatch.setattr(_environment, "c_compiler", lambda: None)
    function, status = _fresh_load(monkeypatch, tmp_path)
    assert function is None and "no C compiler" in status


def test_opting_out_falls_back(monkeypatch, tmp_path):
    function, status = _fresh_load(monkeypatch, tmp_path, **{_cpu_kernel.KERNEL_VAR: "python"})
    assert function is None and _cpu_kernel.KERNEL_VAR in status
    assert not (tmp_path / "cache").exists()


@needs_compiler
def test_an_unusable_cache_falls_back_quietly(monkeypatch, tmp_path):
    monkeypatch.delenv(_cpu_kernel.KERNEL_VAR, raising=False)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(_environment.CACHE_DIR_VAR, str(tmp_path / "file" / "sub"))
    function, status = _cpu_kernel._load()
    assert function is None and status.startswith("not built:")


def test_a_process_without_the_compiled_kernel_still_computes_the_op(tmp_path):
    code = (
        "import torch, torchair_plugin\n"
        "from torchair_plugin import _cpu_kernel\n"
        "table = torch.tensor([[2, 4, 5], [1, 3, 0]], dtype=torch.int32)\n"
        "ids = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)\n"
        "print(_cpu_kernel.status())\n"
        "print(torchair_plugin.npu_moe_update_expert(ids, table, local_rank_id=1, world_size=2)[0].tolist())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCH_DEVICE_BACKEND_AUTOLOAD="0", CC=str(tmp_path / "no-such-cc"),
               PATH=str(tmp_path), TORCHAIR_PLUGIN_CACHE_DIR=str(tmp_path / "cache"))
    env.pop(_cpu_kernel.KERNEL_VAR, None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    status, result = done.stdout.splitlines()[-2:]
    assert "no C compiler" in status and result == "[[5, 3], [3, 5]]"


@needs_compiled_kernel
@pytest.mark.parametrize("change", [
    dict(bs=0), dict(bs=513), dict(k=17), dict(experts=1025), dict(f=1), dict(f=1026),
    dict(local_rank_id=-1), dict(local_rank_id=8), dict(world_size=0),
])
def test_the_c_entry_refuses_what_the_checks_would_before_reading(change):
    """Defence in depth: called past the Python checks, the C kernel returns nonzero (the caller
    then runs the Python kernel) instead of indexing outside its buffers."""
    kernel = _cpu_kernel.function()
    args = dict(bs=2, k=2, experts=2, f=3, local_rank_id=1, world_size=8)
    args.update(change)
    ids = torch.zeros(4, dtype=torch.int32)
    table = torch.tensor([[2, 4, 5], [1, 3, 0]], dtype=torch.int32)
    out, keep = torch.full((4,), -7, dtype=torch.int32), torch.zeros(4, dtype=torch.bool)
    status = kernel(_cpu_kernel.pack_arguments(
        ids.data_ptr(), 0, args["bs"], args["k"], table.data_ptr(), args["experts"], args["f"],
        0, 0, 0, 0, args["local_rank_id"], args["world_size"], 0, out.data_ptr(), keep.data_ptr()))
    assert status == 2 and out.tolist() == [-7] * 4
