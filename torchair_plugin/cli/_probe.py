"""Facts about this machine for ``doctor``: versions, CANN, NPUs, GE-capture prerequisites.

Nothing here imports torch_npu or torchair. Without CANN, ``import torch_npu`` fails and leaves
half-imported modules behind, so versions come from distribution metadata and file locations.
Where CANN is present the package import has already imported torch_npu (registration lets it
register its op first), and only then is it asked how many NPUs it sees.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from torchair_plugin import environment

MIN_PROTOBUF = (3, 13)  # torchair asserts this at import time
# Files a CANN toolkit records its version in, relative to its home (releases differ).
_CANN_VERSION_FILES = (
    "*/ascend_toolkit_install.info",
    "ascend_toolkit_install.info",
    "compiler/version.info",
    "runtime/version.info",
)
_VERSION_LINE = re.compile(r"^\s*version\s*=\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def distribution_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> tuple:
    """The leading numeric components: "2.13.0+cpu" -> (2, 13, 0), "7.36.2" -> (7, 36, 2)."""
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def cann_version(home: str) -> Optional[str]:
    for pattern in _CANN_VERSION_FILES:
        for path in sorted(glob.glob(os.path.join(home, pattern))):
            try:
                with open(path, encoding="utf-8", errors="replace") as file:
                    match = _VERSION_LINE.search(file.read())
            except OSError:
                continue
            if match:
                return match.group(1)
    return None


def torchair_location() -> Dict[str, Optional[str]]:
    """Where torchair would come from: its own distribution, or the copy inside torch-npu."""
    standalone = distribution_version("torchair")
    if standalone is not None:
        return {"version": standalone, "source": "torchair distribution"}
    root = environment.torch_npu_dir()
    bundled = os.path.join(root, "dynamo", "torchair") if root is not None else None
    if bundled is not None and os.path.isfile(os.path.join(bundled, "__init__.py")):
        version = distribution_version("torch_npu")
        return {"version": version, "source": f"bundled with torch-npu {version} ({bundled})"}
    return {"version": None, "source": None}


def npu_devices() -> Dict[str, object]:
    """Device nodes of the Ascend driver, and torch_npu's count when it is loaded."""
    nodes = sorted(glob.glob("/dev/davinci[0-9]*"))
    count = None
    if "torch_npu" in sys.modules:
        import torch

        try:
            count = int(torch.npu.device_count())  # type: ignore[attr-defined]  # added by torch_npu
        except Exception:  # a driver/runtime mismatch: report it as "none seen", doctor advises
            count = 0
    visible = bool(count) if count is not None else False
    return {"visible": visible, "torch_npu_device_count": count, "device_nodes": nodes}


def stub_cache() -> Tuple[str, Optional[str]]:
    """(the stub cache directory, why stubs cannot be built there or None), creating nothing."""
    from torchair_plugin.testing import stub_cache_problem

    root = environment.cache_root()
    return str(root), stub_cache_problem(root)


def stub_cache_trust(cache_dir: str) -> Dict[str, object]:
    """The cache root's owner and mode, and whether the package will load stubs from it."""
    import pwd
    import stat

    from torchair_plugin.testing import stub_cache_trust_problem

    try:
        info = os.lstat(cache_dir)
    except OSError:
        return {"owner": None, "mode": None, "trusted": True, "trust_problem": None}  # made private when needed
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    problem = stub_cache_trust_problem(Path(cache_dir))
    return {
        "owner": owner,
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "trusted": problem is None,
        "trust_problem": problem,
    }


def capture_requirements(torch_version: str, cache_dir: str, cache_problem: Optional[str]) -> Dict[str, object]:
    """What CANN-less GE capture needs, each None/False when missing."""
    torch_npu = distribution_version("torch_npu")
    cc = environment.c_compiler()
    protobuf = distribution_version("protobuf")
    return {
        "linux": platform.system() == "Linux",
        "c_compiler": shlex.join(cc) if cc else None,  # the command the stub build runs
        "nm": shutil.which("nm"),
        "readelf": shutil.which("readelf"),
        "torch_npu_wheel": torch_npu,
        "torch_npu_matches_torch": torch_npu is not None
        and version_tuple(torch_npu)[:2] == version_tuple(torch_version)[:2],
        "protobuf": protobuf if protobuf and version_tuple(protobuf)[:2] >= MIN_PROTOBUF else None,
        "torch_npu_has_op": torch_npu is None or environment.torch_npu_has_op(),
        "capture_layer": importlib.util.find_spec("torchair_plugin.testing") is not None,
        "stub_cache": cache_dir if cache_problem is None else None,
    }


def missing_requirements(requirements: Mapping[str, object]) -> List[str]:
    return [name for name, value in requirements.items() if not value]


def collect() -> Dict[str, object]:
    """Every fact doctor reports, JSON-serialisable."""
    import torch

    import torchair_plugin

    home = environment.cann_home()
    cache_dir, cache_problem = stub_cache()
    requirements = capture_requirements(torch.__version__, cache_dir, cache_problem)
    return {
        "plugin": torchair_plugin.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_npu": {
            "version": distribution_version("torch_npu"),
            "imported": "torch_npu" in sys.modules,
        },
        "torchair": torchair_location(),
        "protobuf": distribution_version("protobuf"),
        "cann": {"home": home, "version": cann_version(home) if home else None},
        "npu": npu_devices(),
        "cuda": bool(torch.cuda.is_available()),
        "capture": {
            "possible": not missing_requirements(requirements),
            "requirements": requirements,
            "stub_cache": {"directory": cache_dir, "problem": cache_problem, **stub_cache_trust(cache_dir)},
        },
        "registration": torchair_plugin.registration_report(),
    }
