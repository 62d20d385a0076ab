"""Import torchair on a machine with torch-npu but no CANN (and do nothing where CANN is).

Contract of :func:`import_torchair`: returns the ``torchair`` module, ready to lower FX graphs
to GE graphs. Idempotent and thread-safe. Where CANN is installed it only imports torch_npu
and torchair the normal way; nothing is stubbed or patched. Without CANN it

1. builds (or reuses) stub libraries for the CANN sonames (:mod:`._stubs`) and preloads them;
2. puts ``torch_npu/dynamo`` on ``sys.path`` (torchair's top-level name lives there);
3. blocks ``import torch_npu`` (it cannot work without CANN, and a failed attempt leaves
   half-imported ``torch_npu.*`` modules that torchair would then try to use);
4. imports torchair and applies :mod:`._interception`.

If any step fails, what was done is undone and :class:`CannLessUnavailable` says what to
install. The stub libraries themselves cannot be unloaded; they define only symbols nobody else
defines, so they are inert.
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys
import threading
from types import ModuleType
from typing import Callable, List, Optional, Tuple

from torchair_plugin import _environment
from torchair_plugin.testing import _interception, _stubs

INSTALL_TORCH_NPU = "pip install torch-npu==2.13.0 protobuf"


class CannLessUnavailable(RuntimeError):
    """A prerequisite is missing (torch-npu, protobuf, a C compiler, binutils, a writable stub
    cache), or torch_npu is already imported; the message says what to install or fix. Tests
    skip on this, never on other errors (those are bugs to see)."""


class Mode(enum.Enum):
    NATIVE = "native"  # CANN is present: import torchair the normal way, touch nothing
    CANN_LESS = "cann-less"  # torch-npu without CANN: stubs + interception
    UNAVAILABLE = "unavailable"  # no torch-npu: torchair does not exist here


def decide_mode(cann_dir: Optional[str], npu_installed: bool) -> Mode:
    """Which way torchair is imported, from the two facts that decide it."""
    if cann_dir is not None:
        return Mode.NATIVE
    if not npu_installed:
        return Mode.UNAVAILABLE
    return Mode.CANN_LESS


def current_mode() -> Mode:
    """This process's mode: the one import_torchair chose, else what it would choose now."""
    if _mode is not None:
        return _mode
    return decide_mode(_environment.cann_home(), _environment.torch_npu_installed())


class _BlockTorchNpu(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Make ``import torch_npu`` fail cleanly, before any of its submodules runs.

    ``sys.modules["torch_npu"] = None`` is not enough: torchair tests
    ``'torch_npu' in sys.modules`` and then uses the entry. The real spec is still found, with
    its location (so ``importlib.util.find_spec("torch_npu")`` keeps answering where torch-npu
    is installed); only its loader is replaced, and loading fails before a module object
    reaches ``sys.modules``.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch_npu" and not fullname.startswith("torch_npu."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None:
            spec.loader = self
        return spec

    def create_module(self, spec):
        raise ImportError(
            f"{spec.name} is not importable in this process: it needs CANN, and "
            "torchair_plugin.testing runs torchair on CANN-less stubs",
            name=spec.name,
        )

    def exec_module(self, module):  # never reached: create_module raises
        raise ImportError(module.__name__)


class _Loaded:
    """What a successful CANN-less import did, kept for the life of the process."""

    def __init__(self) -> None:
        self.undo: List[Callable[[], None]] = []
        self.stubs: Optional[_stubs.StubSet] = None
        self.libraries: list = []  # ctypes handles: keep them referenced


_lock = threading.RLock()
_torchair: Optional[ModuleType] = None
_mode: Optional[Mode] = None
_loaded: Optional[_Loaded] = None


def _torch_npu_dir() -> str:
    directory = _environment.torch_npu_dir()
    if directory is None:
        raise CannLessUnavailable(f"torch-npu is not installed: {INSTALL_TORCH_NPU}")
    return directory


def native_modules() -> List[str]:
    """torchair's native extension modules in the installed torch-npu (the stubs' input)."""
    core = os.path.join(_torch_npu_dir(), "dynamo", "torchair", "core")
    modules = sorted(os.path.join(core, f) for f in os.listdir(core) if f.endswith(".so"))
    if not modules:
        raise CannLessUnavailable(f"no native modules under {core}: is torch-npu installed completely?")
    return modules


def stub_libraries() -> Optional[_stubs.StubSet]:
    """The stub set this process loaded, or None (CANN present, or not imported yet)."""
    return _loaded.stubs if _loaded is not None else None


def preload_stubs() -> Tuple[_stubs.StubSet, list]:
    """Build (or reuse) the stub libraries for the installed torch-npu and load them globally.

    Returns the stub set and the ctypes handles (keep them referenced). Step 1 of the CANN-less
    import, on its own for tests that import torchair another way (e.g. through torch_npu's
    lazy ``torchair`` proxy). CannLessUnavailable when torch-npu or a build tool is missing, or
    the stub cache location cannot be written.
    """
    import torch  # the stubs must come after torch's own libraries are loaded

    try:
        npu_version = importlib.metadata.version("torch-npu")
    except importlib.metadata.PackageNotFoundError:
        npu_version = "unknown"
    try:
        stubs = _stubs.ensure_stubs(native_modules(), npu_version, torch.__version__)
    except (_stubs.MissingTool, _stubs.CacheUnusable) as exc:
        raise CannLessUnavailable(str(exc)) from exc
    return stubs, _stubs.preload(stubs)


def _import_cann_less() -> ModuleType:
    global _loaded
    import torch  # noqa: F401  (the stubs must come after torch's own libraries are loaded)

    if "torch_npu" in sys.modules and sys.modules["torch_npu"] is not None:
        raise CannLessUnavailable("torch_npu is already imported: CANN-less capture needs a process without it")
    state = _Loaded()
    try:
        dynamo_dir = os.path.join(_torch_npu_dir(), "dynamo")
        state.stubs, state.libraries = preload_stubs()

        blocker = _BlockTorchNpu()
        sys.meta_path.insert(0, blocker)
        state.undo.append(lambda: sys.meta_path.remove(blocker))
        if dynamo_dir not in sys.path:
            sys.path.append(dynamo_dir)
            state.undo.append(lambda: sys.path.remove(dynamo_dir))
        state.undo.append(_forget_torchair_modules)
        try:
            import torchair
        except ImportError as exc:
            if exc.name in ("google", "google.protobuf") or "protobuf" in str(exc):
                raise CannLessUnavailable(f"torchair needs protobuf: {INSTALL_TORCH_NPU}") from exc
            raise RuntimeError(f"import torchair failed on CANN-less stubs: {exc}") from exc
        state.undo.extend(_interception.apply(torchair))
    except BaseException:
        for undo in reversed(state.undo):
            undo()
        raise
    _loaded = state
    return torchair


def _forget_torchair_modules() -> None:
    for name in [n for n in sys.modules if n == "torchair" or n.startswith("torchair.")]:
        del sys.modules[name]


def _import_native() -> ModuleType:
    with _environment.forgotten_if_failed("torch_npu", "torchair"):
        import torch_npu  # noqa: F401  (registers the NPU device; torchair expects it)
        import torchair

        # torch_npu may install a lazy proxy as ``torchair``; touching an attribute makes it import
        # the real package, so that ``torchair._ge_concrete_graph`` is importable for the capture hook.
        torchair.CompilerConfig  # noqa: B018
    return torchair


def import_torchair() -> ModuleType:
    """Return ``torchair``, importable for GE lowering (see the module docstring)."""
    global _torchair, _mode
    with _lock:
        if _torchair is None:
            mode = current_mode()
            if mode is Mode.UNAVAILABLE:
                raise CannLessUnavailable(f"torch-npu is not installed (torchair ships inside it): {INSTALL_TORCH_NPU}")
            _torchair = _import_native() if mode is Mode.NATIVE else _import_cann_less()
            _mode = mode
        return _torchair
