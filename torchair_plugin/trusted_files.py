"""The one rule for everything the package loads or runs from disk, and the one way it writes there.

What the package loads (the generated CANN stub libraries, mapped with ``RTLD_GLOBAL`` into
pytest, ``lower`` and ``demo``) and what it trusts (their manifest, the cached probe result)
must come from a place no other local user can write. The rule is the one ssh and gpg apply: a
directory or file is trusted only if it is owned by the current user and not writable by group
or others, and it is not a symbolic link. A digest next to a library proves nothing on its own:
whoever can replace the library can rewrite the digest.

Writes follow the same rule: directories are made 0700 and files 0600 or 0644 whatever the
umask; a file is written to a fresh temporary name in its directory, opened with ``O_EXCL`` and
``O_NOFOLLOW`` (a link planted there is never followed), then renamed into place, so readers see
the old file or the new one and never a part. Lock files are opened without following links.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]

PRIVATE_DIRECTORY_MODE = 0o700
_OPEN_FLAGS = os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


class UntrustedPath(Exception):
    """A path the package will not load from or write into. ``str()`` is one line: the path, what
    was found, and the fix."""

    def __init__(self, path: PathLike, found: str, fix: str):
        self.path, self.found, self.fix = Path(path), found, fix
        super().__init__(f"{self.path}: {found}; {fix}")


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_trusted(path: PathLike, *, directory: bool) -> None:
    """UntrustedPath unless ``path`` is a directory (or regular file) that is not a link, owned by
    this user and not writable by group or others."""
    path = Path(path)
    info = os.lstat(path)
    kind = "directory" if directory else "regular file"
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedPath(
            path,
            f"is a symbolic link (to {os.readlink(path)}), not a {kind}",
            "remove the link: the package never follows one in its cache",
        )
    if not (stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)):
        raise UntrustedPath(path, f"is not a {kind}", "remove it or point TORCHAIR_PLUGIN_CACHE_DIR elsewhere")
    if info.st_uid != os.geteuid():
        raise UntrustedPath(
            path,
            f"is owned by {_owner_name(info.st_uid)}, not by you ({_owner_name(os.geteuid())})",
            "use a directory of your own (TORCHAIR_PLUGIN_CACHE_DIR) or remove this one",
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedPath(
            path,
            f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})",
            f"run `chmod go-w {path}` or use a directory of your own",
        )


def private_directory(path: PathLike) -> Path:
    """``path`` as a trusted directory: made 0700 if missing (its parents too, as ``mkdir -p``
    would, each 0700), checked if present. UntrustedPath if it exists and fails the rule."""
    path = Path(path)
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIRECTORY_MODE)
        except FileExistsError:
            pass  # made meanwhile by another process: checked below like any existing one
        else:
            os.chmod(directory, PRIVATE_DIRECTORY_MODE, follow_symlinks=False)  # the umask may have removed bits
    check_trusted(path, directory=True)
    return path


def fallback_directory() -> Path:
    """A fresh directory only this process knows about (``mkdtemp``: 0700, a new random name), for
    when the configured cache cannot be trusted: work goes on, nothing is kept between runs."""
    return Path(tempfile.mkdtemp(prefix=f"torchair-plugin-{os.geteuid()}-"))


def write_atomic(directory: PathLike, name: str, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``directory/name`` through a fresh temporary file and a rename.

    The temporary file is created with ``O_EXCL | O_NOFOLLOW`` (nothing that already exists
    there, link or file, is opened) and given ``mode`` exactly; the rename replaces a link at the
    destination instead of writing through it."""
    directory = Path(directory)
    temporary = directory / f".{name}.{secrets.token_hex(8)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, mode & 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fchmod(descriptor, mode)
        finally:
            os.close(descriptor)
        os.replace(temporary, directory / name)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
    return directory / name


def open_lock(path: PathLike) -> int:
    """A descriptor of the lock file ``path`` (made 0600 if missing) for ``fcntl.flock``; a link
    there is refused (ELOOP), never followed to create or truncate its target."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
    try:
        info = os.fstat(descriptor)
        if info.st_uid != os.geteuid() or not stat.S_ISREG(info.st_mode):
            raise UntrustedPath(
                path,
                f"is owned by {_owner_name(info.st_uid)} or not a regular file",
                "remove it: it is recreated on the next run",
            )
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor
