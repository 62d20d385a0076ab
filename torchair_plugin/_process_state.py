"""Everything the plugin keeps for the life of the process, in one object with one lock.

Kept apart from the modules that act on it because a reload of any of them (or
``importlib.reload(torchair_plugin)``) re-executes its body: state kept there would be forgotten,
and the op registered a second time over its own registration. Nothing reloads this module; it
holds data only. Each field says which module writes it; every write happens under :attr:`lock`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class ProcessState:
    # Re-entrant: registering the op installs the converter, a watched import may run its
    # callback in a thread that already holds it, and import_torchair imports torch_npu (whose
    # import re-registers the op) while holding it.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # registration
    registration: Optional[Any] = None  # registration.Registration in force, None before register()
    native_state: Optional[Any] = None  # registration.OpState torch_npu provided, last time looked
    yielded_options: Optional[Any] = None  # registration.Options kept while torch_npu's import runs
    operator_keepalive: Optional[Any] = None  # torch.library.Library holding the op's entry meanwhile
    libraries: List[Any] = field(default_factory=list)  # every torch.library.Library the plugin holds

    # _converter_hook
    converter: Optional[Any] = None  # _converter_hook.ConverterState; None: install() not called yet
    keep_native_converter: bool = False

    # testing._torchair_import and testing._interception
    torchair: Optional[Any] = None  # the torchair module capture uses, once imported
    capture_mode: Optional[Any] = None  # testing.Mode it was imported in
    fallback_reason: str = ""  # why capture runs on stand-ins, '' where it does not
    stubs: Optional[Any] = None  # the stub set loaded into this process
    torch_npu_import_output: str = ""  # what torch_npu printed while it was imported over the stubs
    stub_handles: List[Any] = field(default_factory=list)  # ctypes handles: keep them referenced
    patches: Optional[Any] = None  # testing._interception.Patches applied to torchair
    capture_hook: Optional[Any] = None  # testing._interception.Patches of the capture hook
    aclgraph_hooks: Dict[str, Any] = field(default_factory=dict)  # aclgraph mode -> its hook's Patches

    # testing._stubs
    private_stub_root: Optional[Any] = None  # Path built in when the configured cache is not trusted


STATE = ProcessState()
