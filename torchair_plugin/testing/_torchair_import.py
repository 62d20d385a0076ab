"""Import torchair on a machine with torch-npu but no CANN (and do nothing where CANN is).

Contract of :func:`import_torchair`: returns the ``torchair`` module, ready to lower FX graphs
to GE graphs. Idempotent and thread-safe. Where CANN is installed it only imports torch_npu
and torchair the normal way; nothing is stubbed or patched (:attr:`Mode.NATIVE`). Without CANN,
one of two ways, said by :func:`current_mode` (and in pytest's header and the CLI's output):

- :attr:`Mode.REAL_TORCH_NPU` (preferred): the real torch_npu is imported over stub libraries
  for every CANN soname it and torchair need (:mod:`._stubs`). Its C++ side defines the op's
  schema and NPU kernel, its Python meta functions register, ``import torchair`` is its lazy
  proxy, and dispatch_v2/combine_v2 are its own. The stubs answer the device count with zero
  (so ``torch.npu.is_available()`` is False and FakeTensorMode and the npu backend work);
  device initialisation (``aclInit``, and the device questions asked on its way) is refused
  with an error code and our message, so torch_npu raises and the process lives on (its
  inductor hooks ask for the current device while hashing any graph); any other CANN call
  would use a device and aborts the process with the function's name.
- :attr:`Mode.STAND_IN` (fallback, where the real torch_npu cannot load, e.g. torch-npu 2.14.0
  on the index's CUDA build of torch, which aborts in its own static initialisers): torchair
  alone over stubs, ``import torch_npu`` blocked (a failed attempt would leave half-imported
  ``torch_npu.*`` modules that torchair then tries to use), companion ops from torch-npu's
  files (:mod:`.companion_ops`).

Whether the real torch_npu loads is found out once per stub set in a child process (a
static-initialiser abort would kill this one) and remembered in the stub cache.
``TORCHAIR_PLUGIN_TORCH_NPU=real|stand-in`` forces one. Either way :mod:`._interception`'s
CANN-less patches are applied to torchair. What the import did is kept in
:data:`torchair_plugin._process_state.STATE`. If a step fails, what was done is undone and :class:`CannLessUnavailable`
says what to install. Stub libraries cannot be unloaded; they define only symbols nobody else
defines, so they are inert.
"""

from __future__ import annotations

import contextlib
import enum
import glob
import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, List, Optional, Tuple

from torchair_plugin import _import_watch, _upstream, environment, trusted_files, variables
from torchair_plugin._process_state import STATE
from torchair_plugin.testing import _interception, _stubs

INSTALL_TORCH_NPU = "install torch-npu with --no-deps and protobuf (docs/cann-less-ci.md)"


class CannLessUnavailable(RuntimeError):
    """A prerequisite is missing (torch-npu, protobuf, a C compiler, binutils, a writable stub
    cache), or torch_npu is already imported; the message says what to install or fix. Tests
    skip on this, never on other errors (those are bugs to see)."""


class Mode(enum.Enum):
    NATIVE = "native"  # CANN is present: import torchair the normal way, touch nothing
    REAL_TORCH_NPU = "real torch_npu over CANN stubs"
    STAND_IN = "stand-ins: torchair over CANN stubs, torch_npu not loaded"
    UNAVAILABLE = "unavailable"  # no torch-npu: torchair does not exist here

    @property
    def cann_less(self) -> bool:
        """Capture runs here without CANN (either way)."""
        return self in (Mode.REAL_TORCH_NPU, Mode.STAND_IN)


TORCH_NPU_CHOICE_VAR = "TORCHAIR_PLUGIN_TORCH_NPU"
REAL, STAND_IN = "real", "stand-in"


def decide_mode(
    cann_dir: Optional[str], npu_installed: bool, real_loads: Callable[[], bool] = lambda: True, choice: str = ""
) -> Mode:
    """Which way torchair is imported, from the facts that decide it.

    ``real_loads`` is only called when its answer matters (it may build stubs and start a child
    process); ``choice`` is the user's ``TORCHAIR_PLUGIN_TORCH_NPU`` (empty: automatic).
    """
    if cann_dir is not None:
        return Mode.NATIVE
    if not npu_installed:
        return Mode.UNAVAILABLE
    if choice == STAND_IN:
        return Mode.STAND_IN
    if choice == REAL or real_loads():
        return Mode.REAL_TORCH_NPU
    return Mode.STAND_IN


def _torch_npu_choice() -> str:
    try:
        return variables.read_choice(TORCH_NPU_CHOICE_VAR) or ""
    except variables.VariableError as error:
        raise CannLessUnavailable(str(error)) from None


def current_mode() -> Mode:
    """This process's mode: the one import_torchair chose, else what it would choose now.

    Before the import, a real torch_npu is assumed to load (finding out costs a child process);
    after it, the answer is what ran.
    """
    if STATE.capture_mode is not None:
        return STATE.capture_mode
    if "torch_npu" in sys.modules and environment.cann_home() is None:
        return Mode.REAL_TORCH_NPU  # imported by the user over their own stand-ins for CANN
    return decide_mode(environment.cann_home(), environment.torch_npu_installed(), choice=_torch_npu_choice())


# Stand-in capture: ``import torch_npu`` fails cleanly, before any of its submodules runs.
# ``sys.modules["torch_npu"] = None`` is not enough: torchair tests ``'torch_npu' in sys.modules``
# and then uses the entry.
_REFUSE_TORCH_NPU = "refuse-torch_npu"
_TORCH_NPU_REFUSAL = (
    "is not importable in this process: it needs CANN, and torchair_plugin.testing runs torchair on CANN-less stubs"
)


def _torch_npu_dir() -> str:
    directory = environment.torch_npu_dir()
    if directory is None:
        raise CannLessUnavailable(f"torch-npu is not installed: {INSTALL_TORCH_NPU}")
    return directory


def _shared_objects(directory: str, pattern: str = "*.so") -> List[str]:
    return sorted(glob.glob(os.path.join(directory, pattern)))


def native_modules(real_torch_npu: bool = False) -> List[str]:
    """The native modules the stubs are planned from: torchair's, plus torch_npu's own when the
    real torch_npu is to be loaded (its ``_C`` and ``lib/*.so``)."""
    root = _torch_npu_dir()
    core = os.path.join(root, _upstream.DYNAMO_DIR, "torchair", "core")
    modules = _shared_objects(core)
    if not modules:
        raise CannLessUnavailable(f"no native modules under {core}: is torch-npu installed completely?")
    if real_torch_npu:
        modules += _shared_objects(root, "_C*.so") + _shared_objects(os.path.join(root, "lib"))
    return modules


def preload_stubs(real_torch_npu: bool = False) -> Tuple[_stubs.StubSet, list]:
    """Build (or reuse) the stub libraries for the installed torch-npu and load them globally.

    Returns the stub set and the ctypes handles (keep them referenced). CannLessUnavailable when
    torch-npu or a build tool is missing.
    """
    import torch  # the stubs must come after torch's own libraries are loaded

    try:
        stubs = _stubs.ensure_stubs(
            native_modules(real_torch_npu),
            _torch_npu_version(),
            torch.__version__,
            extra_sonames=_upstream.DLOPENED_SONAMES if real_torch_npu else (),
        )
    except (_stubs.MissingTool, _stubs.CacheUnusable) as exc:
        raise CannLessUnavailable(str(exc)) from exc
    return stubs, _stubs.preload(stubs)


def _torch_npu_version() -> str:
    return environment.torch_npu_version() or "unknown"


# --- does the real torch_npu load here? ---------------------------------------------------------
_PROBE_FILE = "real_torch_npu_probe.json"
_PROBE_CODE = """
import ctypes, sys
import torch
for path in sys.argv[1:]:
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
import torch_npu
assert not torch.npu.is_available()
print("torch_npu loaded")
"""


@dataclass(frozen=True)
class ProbeResult:
    loads: bool
    detail: str  # the child's last line of output when it did not load
    transient: bool = False  # killed from outside or timed out: says nothing about torch_npu


# A child ended by one of these was stopped from outside (the OOM killer, a timeout, a user's
# Ctrl-C), not by torch_npu's import, which fails by raising or aborting (SIGABRT, SIGSEGV).
_OUTSIDE_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PROBE_TIMEOUT_S = 300


def probe_real_torch_npu(stubs: _stubs.StubSet) -> ProbeResult:
    """Import the real torch_npu over ``stubs`` in a child process; remembered in the stub entry."""
    record = stubs.directory / _PROBE_FILE
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        return ProbeResult(bool(data["loads"]), str(data["detail"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    env = dict(os.environ, **{environment.AUTOLOAD_VAR: "0"})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE_CODE, *map(str, stubs.libraries())],
            capture_output=True,
            text=True,
            env=env,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"the probe timed out after {PROBE_TIMEOUT_S} s (asked again next run)", True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    loads = proc.returncode == 0 and "torch_npu loaded" in proc.stdout
    if -proc.returncode in _OUTSIDE_SIGNALS:
        name = signal.Signals(-proc.returncode).name
        return ProbeResult(False, f"the probe was killed by {name} (asked again next run)", True)
    # The abort's reason (a C++ ``what():`` or an error line) says more than the last line.
    telling = (
        [line for line in lines if "what():" in line]
        or [line for line in lines if "Error" in line]
        or lines[-1:]
        or ["no output"]
    )
    result = ProbeResult(loads, "" if loads else f"exit {proc.returncode}: {telling[0].strip()[:300]}")
    try:
        trusted_files.write_atomic(
            stubs.directory, _PROBE_FILE, json.dumps({"loads": result.loads, "detail": result.detail}).encode()
        )
    except OSError:
        pass  # an unwritable cache only costs the probe again next time
    return result


def stub_libraries() -> Optional[_stubs.StubSet]:
    """The stub set this process loaded, or None (CANN present, or not imported yet)."""
    return STATE.stubs


def fallback_reason() -> str:
    """Why this process runs on stand-ins rather than the real torch_npu ('' when it does not)."""
    return STATE.fallback_reason


def describe_capture() -> str:
    """This process's capture mode in words, with the reason when it fell back to stand-ins."""
    reason = STATE.fallback_reason
    return current_mode().value + (f" ({reason})" if reason else "")


def _import_real_torch_npu() -> ModuleType:
    import torch  # noqa: F401  (the stubs must come after torch's own libraries are loaded)

    if "torch_npu" not in sys.modules:
        STATE.stubs, STATE.stub_handles = preload_stubs(real_torch_npu=True)
        # torch_npu prints that CANN's variables are not set (true, and expected here) on stdout,
        # where it would corrupt ``lower --json`` and be the first line of every demo and pytest
        # run: it is kept, for doctor and pytest -v, and printed nowhere else.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            import torch_npu  # noqa: F401  (the plugin's registration makes way and re-plans)
        STATE.torch_npu_import_output = printed.getvalue()
    import torchair

    _upstream.torchair_package(load=True)  # the real package behind torch_npu's lazy proxy
    STATE.patches = _interception.apply_cann_less()
    return torchair


def _real_loads() -> bool:
    """Whether the real torch_npu imports here over stubs (a child process finds out once)."""
    if "torch_npu" in sys.modules:
        return True
    stubs, _ = preload_stubs(real_torch_npu=True)
    result = probe_real_torch_npu(stubs)
    STATE.fallback_reason = (
        "" if result.loads else f"the real torch_npu does not load here over CANN stubs ({result.detail})"
    )
    return result.loads


def _import_stand_in() -> ModuleType:
    import torch  # noqa: F401  (the stubs must come after torch's own libraries are loaded)

    if "torch_npu" in sys.modules and sys.modules["torch_npu"] is not None:
        raise CannLessUnavailable("torch_npu is already imported: stand-in capture needs a process without it")
    undo: List[Callable[[], None]] = []
    try:
        dynamo_dir = os.path.join(_torch_npu_dir(), _upstream.DYNAMO_DIR)
        stubs, handles = preload_stubs()

        _import_watch.refuse(_REFUSE_TORCH_NPU, ("torch_npu",), _TORCH_NPU_REFUSAL)
        undo.append(lambda: _import_watch.unwatch(_REFUSE_TORCH_NPU))
        if dynamo_dir not in sys.path:
            sys.path.append(dynamo_dir)
            undo.append(lambda: sys.path.remove(dynamo_dir))
        undo.append(_forget_torchair_modules)
        try:
            import torchair
        except ImportError as exc:
            if exc.name in ("google", "google.protobuf") or "protobuf" in str(exc):
                raise CannLessUnavailable(f"torchair needs protobuf: {INSTALL_TORCH_NPU}") from exc
            raise RuntimeError(f"import torchair failed on CANN-less stubs: {exc}") from exc
        STATE.patches = _interception.apply_cann_less()
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    STATE.stubs, STATE.stub_handles = stubs, handles
    return torchair


def _forget_torchair_modules() -> None:
    for name in [n for n in sys.modules if n == "torchair" or n.startswith("torchair.")]:
        del sys.modules[name]


def _import_native() -> ModuleType:
    with environment.forgotten_if_failed("torch_npu", "torchair"):
        import torch_npu  # noqa: F401  (registers the NPU device; torchair expects it)
        import torchair

        # torch_npu may install a lazy proxy as ``torchair``: loading it makes the real package's
        # submodules importable for the capture hook.
        _upstream.torchair_package(load=True)
    return torchair


def import_torchair() -> ModuleType:
    """Return ``torchair``, importable for GE lowering (see the module docstring)."""
    with STATE.lock:
        if STATE.torchair is None:
            if environment.torch_npu_installed() and not environment.torch_npu_has_op():
                raise CannLessUnavailable(
                    f"torch-npu {_torch_npu_version()} predates npu_moe_update_expert and its torchair cannot lower "
                    "it: capture needs torch-npu >= 2.6 (docs/compatibility.md)"
                )
            mode = decide_mode(
                environment.cann_home(), environment.torch_npu_installed(), _real_loads, _torch_npu_choice()
            )
            if mode is Mode.UNAVAILABLE:
                raise CannLessUnavailable(f"torch-npu is not installed (torchair ships inside it): {INSTALL_TORCH_NPU}")

            importers = {
                Mode.NATIVE: _import_native,
                Mode.REAL_TORCH_NPU: _import_real_torch_npu,
                Mode.STAND_IN: _import_stand_in,
            }
            torchair = importers[mode]()
            # Capture runs graphs eagerly on CPU: the dispatch/combine companions need a CPU
            # kernel (and, without torch_npu, a definition) for chain graphs to capture.
            from torchair_plugin.testing.companion_ops import define_companion_ops

            define_companion_ops()
            STATE.torchair, STATE.capture_mode = torchair, mode
        return STATE.torchair
