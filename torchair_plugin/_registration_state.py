"""Transitional: ``registration`` of :data:`torchair_plugin._process_state.STATE` under its old name.

Only ``ops.py``'s eager fast path (and its test) still read it; delete this module with that path.
"""

import sys
import types

from torchair_plugin._process_state import STATE


class _Forwarding(types.ModuleType):
    @property
    def registration(self):
        return STATE.registration

    @registration.setter
    def registration(self, value) -> None:
        STATE.registration = value


sys.modules[__name__].__class__ = _Forwarding
