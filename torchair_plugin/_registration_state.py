"""What the plugin has registered in this process, and the one lock that guards it.

Kept apart from :mod:`torchair_plugin.registration` and :mod:`torchair_plugin._converter_hook`
because a reload of either (or ``importlib.reload(torchair_plugin)``) re-executes its module
body: state kept there would be forgotten, and the op registered a second time over its own
registration. Nothing reloads this module; it holds data only.
"""

import threading
from typing import Any, Optional

# Re-entrant: registering the op installs the converter, and a watched import may run the
# watcher's callback in a thread that already holds it.
lock = threading.RLock()

registration: Optional[Any] = None  # registration.Registration in force, None before register()
native_state: Optional[Any] = None  # registration.OpState torch_npu provided, last time looked
yielded_options: Optional[Any] = None  # registration.Options kept while torch_npu's import runs

converter_status: Optional[str] = None  # None: _converter_hook.install() not called yet
keep_native_converter = False
