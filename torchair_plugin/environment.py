"""What this machine has: torch-npu installed, CANN present, torch already imported.

Everything here must run before ``import torch`` (the package's ``__init__`` calls
:func:`prepare_torch_import` first), so it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, MutableMapping, Optional

from torchair_plugin import _upstream

AUTOLOAD_VAR = "TORCH_DEVICE_BACKEND_AUTOLOAD"
CC_VAR = "CC"
CACHE_DIR_VAR = "TORCHAIR_PLUGIN_CACHE_DIR"

# CANN's set_env.sh exports these; a toolkit installed in the default place has no variable.
_CANN_ENV_VARS = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_OPP_PATH", "ASCEND_AICPU_PATH")
_CANN_DEFAULT_DIRS = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")
_CANN_RUNTIME_LIBRARY = "libascendcl.so"


def torch_npu_version() -> Optional[str]:
    """The installed torch-npu distribution's version, read without importing it; None if absent."""
    try:
        return importlib.metadata.version("torch-npu")
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_npu_dir() -> Optional[str]:
    """The installed torch_npu package's directory, found without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec("torch_npu")
    except (ImportError, ValueError):  # a broken entry in sys.modules, or torch_npu.__spec__ None
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def torch_npu_installed() -> bool:
    """True when the torch_npu distribution is on the path (found without importing it)."""
    return torch_npu_dir() is not None


def c_compiler(environ: Mapping[str, str] = os.environ) -> Optional[List[str]]:
    """The C compiler command as argv: ``$CC`` split like a shell does (``CC="ccache gcc"`` is
    ccache running gcc), else cc, else gcc; the first word resolved on PATH. None if none is found.

    The stub build runs it and doctor reports it: both ask here, so they cannot disagree.
    """
    candidates = [shlex.split(environ[CC_VAR])] if environ.get(CC_VAR, "").strip() else []
    for argv in candidates + [["cc"], ["gcc"]]:
        path = shutil.which(argv[0])
        if path:
            return [path, *argv[1:]]
    return None


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """$TORCHAIR_PLUGIN_CACHE_DIR, else $XDG_CACHE_HOME/torchair-plugin, else ~/.cache/torchair-plugin.

    Where built files live: the CANN stub libraries."""
    if environ.get(CACHE_DIR_VAR):
        return Path(environ[CACHE_DIR_VAR])
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchair-plugin"


@contextlib.contextmanager
def forgotten_if_failed(*packages: str) -> Iterator[None]:
    """Run an import block; if it fails, drop from sys.modules what it added of ``packages``.

    A failed ``import torch_npu`` (CANN found but broken, or absent) leaves the submodules that
    did load behind without their package; a later import or ``in sys.modules`` test would then
    find them half-made.
    """
    before = frozenset(sys.modules)
    try:
        yield
    except BaseException:
        for name in [n for n in sys.modules if n.split(".", 1)[0] in packages and n not in before]:
            del sys.modules[name]
        raise


def cann_home(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """Where CANN is, or None on a machine without CANN.

    Found from the variables CANN's set_env.sh exports, the default install directories, or
    CANN's runtime library on LD_LIBRARY_PATH (containers that only set the library path). A
    CANN found none of these ways is missed: set TORCH_DEVICE_BACKEND_AUTOLOAD yourself there.
    """
    for var in _CANN_ENV_VARS:
        path = environ.get(var)
        if path and os.path.isdir(path):
            return path
    for path in _CANN_DEFAULT_DIRS:
        if os.path.isdir(path):
            return path
    for directory in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if directory and os.path.isfile(os.path.join(directory, _CANN_RUNTIME_LIBRARY)):
            return directory
    return None


def should_disable_backend_autoload(
    environ: Mapping[str, str], torch_imported: bool, npu_installed: bool, cann_dir: Optional[str]
) -> bool:
    """Decide whether to set TORCH_DEVICE_BACKEND_AUTOLOAD=0 before torch is imported.

    torch auto-loads the torch_npu backend entry point at ``import torch``; without CANN that
    import fails and takes ``import torch`` down with it. Only then is autoload turned off: never
    when the user chose a value, never when CANN is there (the user wants torch_npu), and never
    once torch is imported (too late to matter).
    """
    return not torch_imported and AUTOLOAD_VAR not in environ and npu_installed and cann_dir is None


def for_a_new_process(environ: Mapping[str, str]) -> Dict[str, str]:
    """``environ`` for a child process that will import torch first thing (``torchrun``, a
    script, ``python -c "import torch"``): with autoload turned off where
    :func:`should_disable_backend_autoload` says so for a process that has not imported torch."""
    child = dict(environ)
    if should_disable_backend_autoload(child, False, torch_npu_installed(), cann_home(child)):
        child[AUTOLOAD_VAR] = "0"
    return child


def prepare_torch_import(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Make ``import torch`` work on a machine with torch-npu but no CANN. Returns True if set."""
    torch_imported = "torch" in sys.modules
    if torch_imported or AUTOLOAD_VAR in environ:
        return False  # skip the filesystem probes: the answer cannot be yes
    if should_disable_backend_autoload(environ, torch_imported, torch_npu_installed(), cann_home(environ)):
        environ[AUTOLOAD_VAR] = "0"
        return True
    return False


def torch_npu_has_op() -> bool:
    """Whether the installed torch-npu provides npu_moe_update_expert (read from its files).

    torchair's own converter for the op ships with every torch-npu that has the op (2.6.0 on);
    older torchair knows neither the op nor the GE IR hooks capture relies on."""
    directory = torch_npu_dir()
    return directory is not None and os.path.isfile(os.path.join(directory, _upstream.NATIVE_CONVERTER_FILE))
