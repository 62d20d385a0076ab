"""Running the plugin's code around the import of a module it does not import itself.

The plugin must react to two imports it never triggers: torchair (2-3 s to import; its converter
registry is where the GE converter goes) and torch_npu (its C++ side defines the op's schema, so
a schema the plugin defined first must make way before torch_npu's library loads, or the process
dies in C++ ``terminate``). A :class:`Watcher` is a ``sys.meta_path`` finder that finds nothing
itself: it asks the other finders for the watched module's spec and wraps its loader, so that
``before`` runs just before the module executes and ``after`` just after (whether it succeeded or
not). A watcher that ``refuses`` makes the import fail instead, before a module object exists
(stand-in capture keeps ``import torch_npu`` from half-importing it). Each watcher is recognised
by its ``tag`` across reloads of this module; this is the plugin's only ``sys.meta_path`` finder.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable, Iterable, Optional

Before = Callable[[], None]
After = Callable[[types.ModuleType, bool], None]  # (module, executed without raising)

_MARKER = "_torchair_plugin_watch_tag"


class _WrappedLoader:
    """Runs the real loader between ``before`` and ``after``; gone from the module once used."""

    def __init__(
        self, loader: Any, before: Optional[Before], after: Optional[After], refusal: Optional[str] = None
    ) -> None:
        self._loader = loader
        self._before = before
        self._after = after
        self._refusal = refusal

    def create_module(self, spec):
        if self._refusal is not None:
            # Before the module exists: nothing of it reaches sys.modules.
            raise ImportError(f"{spec.name} {self._refusal}", name=spec.name)
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        # The module keeps the real loader (resources, get_source, reloads see no wrapper).
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        if self._before is not None:
            self._before()
        ok = False
        try:
            self._loader.exec_module(module)
            ok = True
        finally:
            if self._after is not None:
                self._after(module, ok)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class Watcher:
    """``sys.meta_path`` finder wrapping the loader of the modules in ``names``."""

    def __init__(
        self,
        tag: str,
        names: Iterable[str],
        before: Optional[Before] = None,
        after: Optional[After] = None,
        refusal: Optional[str] = None,
    ) -> None:
        setattr(self, _MARKER, tag)
        self.names = frozenset(names)
        self._before = before
        self._after = after
        self._refusal = refusal

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            if getattr(finder, _MARKER, None) is not None or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _WrappedLoader(  # type: ignore[assignment]  # a loader by duck typing
                        spec.loader, self._before, self._after, self._refusal
                    )
                return spec
        return None

    def invalidate_caches(self) -> None:
        pass


def is_watching(tag: str) -> bool:
    return any(getattr(f, _MARKER, None) == tag for f in sys.meta_path)


def watch(tag: str, names: Iterable[str], before: Optional[Before] = None, after: Optional[After] = None) -> None:
    """Install a watcher for ``tag`` unless one is there (first in ``sys.meta_path``)."""
    if not is_watching(tag):
        sys.meta_path.insert(0, Watcher(tag, names, before, after))


def refuse(tag: str, names: Iterable[str], refusal: str) -> None:
    """Make importing ``names`` raise ImportError("<name> <refusal>"); the spec is still found
    (``importlib.util.find_spec`` keeps answering where the package is). Undo with :func:`unwatch`."""
    if not is_watching(tag):
        sys.meta_path.insert(0, Watcher(tag, names, refusal=refusal))


def unwatch(tag: str) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, _MARKER, None) != tag]
