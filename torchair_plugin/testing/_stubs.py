"""Stub shared libraries standing in for CANN, so that torchair's native modules load.

torchair's extension modules (``torchair/core/*.so``) have DT_NEEDED entries on CANN (and
``libtorch_npu.so``) sonames and leave ~110 symbols for them to define. Nothing calls those
symbols while torchair imports and lowers FX to GE, so empty definitions satisfy the loader.
The symbol list is read from the installed modules themselves (never retyped), so the stubs
follow whatever torch-npu release is installed.

Contract of :func:`ensure_stubs`: returns a :class:`StubSet` whose libraries, once loaded with
``RTLD_GLOBAL`` (see :func:`preload`), let ``import torchair`` resolve every symbol. Results are
cached per torch-npu version and symbol list in a user cache directory; a cache entry is only
ever seen complete (built in a temporary directory, then renamed into place).

Tools: ``nm`` and ``readelf`` (binutils, installed with gcc) and the system C compiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Set, Tuple

from torchair_plugin import environment, trusted_files
from torchair_plugin._process_state import STATE
from torchair_plugin.environment import CACHE_DIR_VAR, cache_root  # noqa: F401  (part of this module's API)

# Bump when the generated C or the layout of a cache entry changes: old entries are then ignored.
_GENERATOR_VERSION = "5"
_ALL_SYMBOLS_LIB = "libtorchair_plugin_cann_stubs.so"
_MANIFEST = "manifest.json"

# A symbol written into C source must be a plain C identifier (mangled C++ names are). Anything
# else (a version suffix, punctuation, a newline) is refused rather than escaped: it would mean
# the ELF reader or the input is not what this module expects.
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Sonames become file names in the cache directory: no separators, no leading dot.
_SONAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*\Z")

# securec (Huawei's bounds-checked libc) is linked into CANN's own libraries, not into any
# DT_NEEDED library of torchair, so the stubs must provide it. torchair calls these while
# formatting messages; give them real, small implementations instead of fatal stubs.
_SECUREC_SOURCE = r"""
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int vsnprintf_s(char *dest, size_t dest_max, size_t count, const char *format, va_list args) {
    if (dest == NULL || dest_max == 0 || format == NULL) return -1;
    size_t limit = count < dest_max ? count + 1 : dest_max;
    int n = vsnprintf(dest, limit, format, args);
    if (n < 0) { dest[0] = '\0'; return -1; }
    if ((size_t)n >= limit) return -1;  /* truncated: securec reports -1, dest is terminated */
    return n;
}

int snprintf_s(char *dest, size_t dest_max, size_t count, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int n = vsnprintf_s(dest, dest_max, count, format, args);
    va_end(args);
    return n;
}

int strcpy_s(char *dest, size_t dest_max, const char *src) {
    if (dest == NULL || dest_max == 0) return 22;            /* EINVAL */
    if (src == NULL) { dest[0] = '\0'; return 22; }
    size_t len = strlen(src);
    if (len >= dest_max) { dest[0] = '\0'; return 34; }      /* ERANGE */
    memcpy(dest, src, len + 1);
    return 0;
}
"""
_SECUREC_SYMBOLS = frozenset({"vsnprintf_s", "snprintf_s", "strcpy_s"})

# A stub that is ever called means torchair reached CANN: stop loudly, naming the function,
# instead of returning garbage that would surface as a wrong graph or a later crash.
_FATAL_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>

static void torchair_plugin_stub_called(const char *name) {
    fprintf(stderr, "torchair_plugin.testing: CANN function %s was called, but this process runs "
            "on CANN-less stubs (graph capture only; nothing may run on an NPU)\n", name);
    abort();
}
"""


# The CANN functions that may be called in a process without an NPU, and what they answer there.
# The real torch_npu asks for the device count whenever torch wants to know whether the device
# exists (``torch.npu.is_available()``, FakeTensorMode, compiling with the npu backend): zero
# devices is the truthful answer.
_NO_DEVICE_ANSWERS = {
    # aclError aclrtGetDeviceCount(uint32_t *count): ACL_SUCCESS (0) with no device.
    "aclrtGetDeviceCount": "int aclrtGetDeviceCount(unsigned int *count) { if (count) *count = 0; return 0; }\n",
}
# The door to every device call, and the questions torch_npu asks on its way through it. torch_npu
# reaches them lazily, also from code that only asks (its inductor hooks ask for the current
# device while hashing any graph), so they fail with ACL_ERROR_UNINITIALIZE (100001) and our
# message instead of ending the process; torch_npu then raises its own error. Every other
# function would really use a device and stays fatal.
_REFUSED = ("aclInit", "aclrtGetDevice", "aclrtSetDevice")
_ACL_ERROR_UNINITIALIZE = 100001


def _refusal(name: str) -> str:
    return (
        f"int {name}(void) {{\n"
        f'    fprintf(stderr, "torchair_plugin.testing: CANN function {name} was called, but this process runs '
        f'on CANN-less stubs (no NPU): answering ACL_ERROR_UNINITIALIZE\\n");\n'
        f"    return {_ACL_ERROR_UNINITIALIZE};\n"
        f"}}\n"
    )


_ANSWERS = {**_NO_DEVICE_ANSWERS, **{name: _refusal(name) for name in _REFUSED}}


class StubError(RuntimeError):
    """Building the stubs failed (a bug here or a broken toolchain): the message says where."""


class MissingTool(StubError):
    """A tool the stubs need (C compiler, binutils) is not installed; the message says which."""


def is_c_identifier(name: str) -> bool:
    """True when ``name`` may be written verbatim into C source as a function name."""
    return isinstance(name, str) and _C_IDENTIFIER.match(name) is not None


def validate_symbol_names(names: Iterable[str]) -> List[str]:
    """Return the names sorted; raise ValueError naming every one that is not a C identifier."""
    names = list(names)
    bad = [n for n in names if not is_c_identifier(n)]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5])
        raise ValueError(f"refusing to write {len(bad)} symbol name(s) into C source: {shown}")
    return sorted(set(names))


def generate_c_source(symbols: Iterable[str]) -> str:
    """C source defining every symbol: securec and "no device" answers for real, others fatal."""
    symbols = validate_symbol_names(symbols)
    parts = [_FATAL_SOURCE, _SECUREC_SOURCE]
    for name in symbols:
        if name in _ANSWERS:
            parts.append(_ANSWERS[name])
        elif name not in _SECUREC_SYMBOLS:
            parts.append(f'void {name}(void) {{ torchair_plugin_stub_called("{name}"); }}\n')
    return "".join(parts)


# --- reading ELF files -------------------------------------------------------------------------


def _run_tool(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise MissingTool(
            f"{argv[0]} not found: install binutils (it comes with gcc, e.g. `apt-get install gcc`)"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise StubError(f"{' '.join(argv)} failed: {exc.stderr.strip()}") from exc
    return proc.stdout


def _parse_nm(output: str) -> List[Tuple[str, str]]:
    """(type letter, name) pairs; names keep nm's ``@VERSION`` suffix when there is one."""
    pairs = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            pairs.append((fields[-2], fields[-1]))
    return pairs


def undefined_symbols(path: str) -> Set[str]:
    """Strong undefined dynamic symbols, without version suffix, except versioned ones.

    A versioned reference (``memcpy@GLIBC_2.14``) is bound to a system library that carries that
    version, never to a stub, so it is left out. Weak references (``w``) need no definition.
    """
    out = _run_tool(["nm", "-D", "--undefined-only", path])
    return {name for kind, name in _parse_nm(out) if kind == "U" and "@" not in name}


def defined_symbols(path: str) -> Set[str]:
    """Names of the dynamic symbols ``path`` defines (version suffixes stripped)."""
    out = _run_tool(["nm", "-D", "--defined-only", path])
    return {name.split("@", 1)[0] for _, name in _parse_nm(out)}


_NEEDED = re.compile(r"\((NEEDED|RPATH|RUNPATH)\)\s+\S.*?\[(.*)\]")


def dynamic_entries(path: str) -> Tuple[List[str], List[str]]:
    """(DT_NEEDED sonames, RPATH/RUNPATH directories with $ORIGIN expanded) of an ELF file."""
    needed: List[str] = []
    dirs: List[str] = []
    origin = os.path.dirname(os.path.abspath(path))
    for kind, value in _NEEDED.findall(_run_tool(["readelf", "-d", "-W", path])):
        if kind == "NEEDED":
            needed.append(value)
        else:
            dirs.extend(p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in value.split(":") if p)
    return needed, dirs


class _LinkMap(ctypes.Structure):
    # The head of glibc's struct link_map (<link.h>), enough to read the file name.
    _fields_ = [("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p)]


_RTLD_DI_LINKMAP = 2


def _loader_path(soname: str) -> Optional[str]:
    """Path of the file the dynamic loader binds ``soname`` to from this process, or None.

    dlopen by soname applies the loader's own rules (already-loaded sonames first, then
    LD_LIBRARY_PATH, ld.so.cache, default dirs), which a file-name search cannot reproduce
    (``libstdc++.so.6`` is mapped from ``libstdc++.so.6.0.30``).
    """
    try:
        handle = ctypes.CDLL(soname, mode=os.RTLD_LAZY | ctypes.RTLD_LOCAL)
    except OSError:
        return None
    libc = ctypes.CDLL(None)
    link_map = ctypes.POINTER(_LinkMap)()
    if libc.dlinfo(ctypes.c_void_p(handle._handle), _RTLD_DI_LINKMAP, ctypes.byref(link_map)) != 0:
        return None
    name = link_map.contents.l_name
    return os.fsdecode(name) if name else None


def _resolve(soname: str, rpath: Sequence[str]) -> Optional[str]:
    # RPATH comes before the default search for the module that names it.
    for directory in rpath:
        candidate = os.path.join(directory, soname)
        if os.path.isfile(candidate):
            return candidate
    found = _loader_path(soname)
    if found is not None and os.path.isfile(os.path.join(os.path.dirname(found), _ALL_SYMBOLS_LIB)):
        return None  # one of our own stubs, preloaded earlier in this process: still missing
    return found


@dataclass(frozen=True)
class SymbolPlan:
    """What the stubs must provide: missing sonames and the symbols nobody else defines."""

    missing_sonames: Tuple[str, ...]
    symbols: Tuple[str, ...]


def plan_stubs(modules: Sequence[str], extra_sonames: Sequence[str] = ()) -> SymbolPlan:
    """Work out which sonames are missing and which symbols only they would have defined.

    ``extra_sonames`` are libraries a module opens with ``dlopen`` at run time (not DT_NEEDED);
    they get an empty stub unless the loader finds them.

    Must run after ``import torch`` (torch's libraries are found as the loader finds them: by
    the sonames this process has loaded). Everything reachable through DT_NEEDED that exists here (torch, libpython, libc,
    the modules themselves) is read for the symbols it defines; the rest is stubbed.
    """
    # The executable's own dependencies (libpython) are in the global scope of every module.
    exe = os.path.realpath(sys.executable)
    modules = [os.path.realpath(m) for m in modules]
    queue = [exe, *modules]
    seen, missing, found_sonames, provided, wanted = set(), set(), set(), set(), set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        needed, rpath = dynamic_entries(path)
        provided |= defined_symbols(path)
        if path in modules:
            wanted |= undefined_symbols(path)
        for soname in needed:
            found = _resolve(soname, rpath)
            if found is None:
                missing.add(soname)
            else:
                found_sonames.add(soname)
                queue.append(os.path.realpath(found))
    missing |= {s for s in extra_sonames if _resolve(s, ()) is None}
    # A soname one module reaches through its RPATH is loaded by the time another one needs it
    # (torchair's modules need libtorch_npu.so, which only torch_npu's _C finds): never stub a
    # library that exists, least of all the real libtorch_npu.so.
    symbols = validate_symbol_names(wanted - provided)
    return SymbolPlan(tuple(sorted(missing - found_sonames)), tuple(symbols))


# --- building and caching ----------------------------------------------------------------------


def cache_key(
    torch_npu_version: str, torch_version: str, modules: Sequence[str], extra_sonames: Sequence[str] = ()
) -> str:
    """Directory name for one stub set: versions plus a hash of the modules' identities.

    A module is identified by its path, size and modification time (and inode): whatever
    changes a module's symbol needs (another wheel, a reinstall) changes those too. Reading the
    symbols themselves (``nm`` on libtorch_npu.so and friends) cost about 0.5 s of every start.
    """
    digest = hashlib.sha256()
    digest.update(f"{_GENERATOR_VERSION}\0{torch_version}\0{sys.implementation.cache_tag}\0".encode())
    digest.update("\0".join(sorted(extra_sonames)).encode() + b"\0")
    for path in sorted(modules):
        stat = os.stat(path)
        digest.update(f"{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\0".encode())
    safe_version = re.sub(r"[^A-Za-z0-9.+_-]", "_", torch_npu_version)
    return f"torch_npu-{safe_version}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class StubSet:
    """A complete cache entry: load ``all_symbols`` first, then each of ``sonames``."""

    directory: Path
    all_symbols: Path
    sonames: Tuple[Path, ...]
    symbols: Tuple[str, ...]
    built: bool  # False when it came from the cache

    def libraries(self) -> List[Path]:
        return [self.all_symbols, *self.sonames]


def _compile(cc: Sequence[str], source: Path, output: Path, soname: str) -> None:
    argv = [*cc, "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o", str(output), str(source)]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise StubError(f"building {soname} with {shlex.join(cc)} failed:\n{exc.stderr.strip()}") from exc


def _build(directory: Path, cc: Sequence[str], plan: SymbolPlan) -> None:
    source = directory / "cann_stubs.c"
    source.write_text(generate_c_source(plan.symbols), encoding="utf-8")
    _compile(cc, source, directory / _ALL_SYMBOLS_LIB, _ALL_SYMBOLS_LIB)
    # The other sonames only need to exist with the right name: the loader matches DT_NEEDED
    # against loaded sonames, and every symbol resolves from the global all-symbols library.
    empty = directory / "empty.c"
    empty.write_text("/* intentionally empty: see torchair_plugin/testing/_stubs.py */\n", encoding="utf-8")
    for soname in plan.missing_sonames:
        if not is_soname(soname):
            raise ValueError(f"refusing to build a stub for the soname {soname!r}")
        _compile(cc, empty, directory / soname, soname)
    for built in directory.iterdir():  # the compiler's files follow the umask: exact modes instead
        os.chmod(built, 0o644, follow_symlinks=False)
    _write_manifest(directory, plan)


# --- the cache entry on disk -------------------------------------------------------------------
# An entry is loaded only if the trust rule of trusted_files holds for it and for every file in
# it (owned by this user, not writable by group or others, no link): a digest proves nothing
# against whoever could rewrite the manifest too. Then its manifest vouches for completeness: a
# process killed mid-write, a full disk or a hand edit can leave a truncated .so, which the
# loader maps and then dies on (SIGBUS), so every library's SHA-256 is checked before loading.


class CacheUnusable(StubError):
    """The stub cache location cannot hold stubs (not a directory, not writable, damaged and not
    repairable): the message names the directory and what to do."""


class _DamagedEntry(Exception):
    """An entry directory exists but is not a complete entry written by _build."""


def is_soname(name: str) -> bool:
    """True when ``name`` may be a file name in a cache entry (no separator, no leading dot)."""
    return isinstance(name, str) and _SONAME.match(name) is not None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_manifest(directory: Path, plan: SymbolPlan) -> None:
    libraries = [_ALL_SYMBOLS_LIB, *plan.missing_sonames]
    manifest = {
        "sonames": list(plan.missing_sonames),
        "symbols": list(plan.symbols),
        "sha256": {name: _sha256(directory / name) for name in libraries},
    }
    trusted_files.write_atomic(directory, _MANIFEST, json.dumps(manifest, indent=1).encode())


def _string_list(manifest: dict, key: str, valid) -> List[str]:
    values = manifest.get(key)
    if not isinstance(values, list) or not all(valid(v) for v in values):
        raise _DamagedEntry(f"{_MANIFEST} has no valid {key!r} list")
    return values


def _load_entry(directory: Path, built: bool) -> Optional[StubSet]:
    """The entry in ``directory``, None when there is none; _DamagedEntry when it is not whole."""
    if not directory.exists():  # also False under a path that is not a directory
        return None
    try:
        trusted_files.check_trusted(directory, directory=True)
        for path in directory.iterdir():
            trusted_files.check_trusted(path, directory=False)
    except trusted_files.UntrustedPath as exc:
        raise _DamagedEntry(f"it is not trusted ({exc})") from exc
    try:
        raw = (directory / _MANIFEST).read_bytes()
    except OSError as exc:
        raise _DamagedEntry(f"{_MANIFEST} is unreadable ({exc.strerror})") from exc
    try:
        manifest = json.loads(raw)  # bytes: a decoding error is a ValueError too
    except ValueError as exc:
        raise _DamagedEntry(f"{_MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise _DamagedEntry(f"{_MANIFEST} holds a {type(manifest).__name__}, not an object")
    sonames = _string_list(manifest, "sonames", is_soname)
    symbols = _string_list(manifest, "symbols", is_c_identifier)
    digests = manifest.get("sha256")
    libraries = [_ALL_SYMBOLS_LIB, *sonames]
    if not isinstance(digests, dict) or sorted(digests) != sorted(libraries):
        raise _DamagedEntry(f"{_MANIFEST} does not list a digest for each library")
    for name in libraries:
        try:
            intact = _sha256(directory / name) == digests[name]
        except OSError as exc:
            raise _DamagedEntry(f"{name} is unreadable ({exc.strerror})") from exc
        if not intact:
            raise _DamagedEntry(f"{name} differs from what was built (truncated or modified)")
    return StubSet(
        directory=directory,
        all_symbols=directory / _ALL_SYMBOLS_LIB,
        sonames=tuple(directory / s for s in sonames),
        symbols=tuple(symbols),
        built=built,
    )


def _unusable(root: Path, reason: str, damaged: Optional[Path] = None) -> str:
    remedy = f"set {CACHE_DIR_VAR} to a writable directory"
    if damaged is not None:
        remedy = f"remove the damaged entry (rm -rf '{damaged}') or {remedy}"
    return f"stub cache directory {root} is not usable: {reason}; {remedy}"


def cache_problem(root: Path) -> Optional[str]:
    """Why stubs cannot be built under ``root`` (one line), found without creating anything;
    None when nothing is in the way."""
    path = Path(root) / "stubs"
    while not path.exists() and path.parent != path:
        path = path.parent  # the nearest existing ancestor is the one that must be writable
    if not path.is_dir():
        return _unusable(root, f"{path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        return _unusable(root, f"{path} is not writable")
    return None


@contextlib.contextmanager
def _exclusive(final: Path):
    """Hold the entry's lock file: one process at a time builds, repairs or renames an entry."""
    lock = trusted_files.open_lock(final.parent / f".{final.name}.lock")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing releases the lock


def _install(final: Path, cc: Sequence[str], plan: SymbolPlan) -> StubSet:
    """Under the entry's lock: reuse what another process built meanwhile, else (re)build.

    A damaged entry is moved aside before the new one is renamed into place, so that a reader
    (which takes no lock) sees the old entry or the new one, never a mixture.
    """
    with _exclusive(final):
        try:
            entry = _load_entry(final, built=False)
        except _DamagedEntry:
            entry = None
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.damaged.", dir=final.parent))
            os.rename(final, aside / final.name)
            shutil.rmtree(aside, ignore_errors=True)
        if entry is not None:
            return entry
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            _build(tmp, cc, plan)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    built = _load_entry(final, built=True)
    assert built is not None  # just renamed into place
    return built


def trust_problem(root: Path) -> Optional[str]:
    """Why the cache ``root`` (or its ``stubs/`` folder) may not be loaded from (one line), or None
    when it is trusted or does not exist yet (it is then made private)."""
    for path in (Path(root), Path(root) / "stubs"):
        if os.path.lexists(path):
            try:
                trusted_files.check_trusted(path, directory=True)
            except trusted_files.UntrustedPath as exc:
                return str(exc)
    return None


def trusted_root(root: Path) -> Path:
    """``root`` if the trust rule holds for it, else (saying so on stderr, once per process) a
    fresh private directory of this process: capture works, nothing is shared or kept."""
    problem = trust_problem(root)
    if problem is None:
        return root
    with STATE.lock:
        if STATE.private_stub_root is None:
            STATE.private_stub_root = trusted_files.fallback_directory()
            print(
                f"torchair-plugin: not using the stub cache: {problem}; building in {STATE.private_stub_root} "
                "for this process instead",
                file=sys.stderr,
            )
        return STATE.private_stub_root


def ensure_stubs(
    modules: Sequence[str],
    torch_npu_version: str,
    torch_version: str,
    root: Optional[Path] = None,
    cc: Optional[Sequence[str]] = None,
    extra_sonames: Sequence[str] = (),
) -> StubSet:
    """The cached stub set for these modules, building it (atomically) when absent or damaged.

    CacheUnusable when the cache location cannot be written (or holds a damaged entry that
    cannot be replaced); the message names the directory.
    """
    root = trusted_root(cache_root() if root is None else Path(root))
    final = root / "stubs" / cache_key(torch_npu_version, torch_version, modules, extra_sonames)
    damaged = None
    try:
        cached = _load_entry(final, built=False)
    except _DamagedEntry as exc:
        damaged, damage = final, f"{final} is damaged ({exc}) and could not be rebuilt: "
    else:
        if cached is not None:
            return cached
        damage = ""
    cc = cc or environment.c_compiler()
    if cc is None:
        raise MissingTool("no C compiler found (tried $CC, cc, gcc): install gcc, e.g. `apt-get install gcc`")
    plan = plan_stubs(modules, extra_sonames)
    try:
        trusted_files.private_directory(final.parent)
        return _install(final, cc, plan)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise CacheUnusable(_unusable(root, f"{damage}{exc.strerror or exc}{where}", damaged)) from exc
    except _DamagedEntry as exc:  # damaged again right after it was written: the disk, not us
        raise StubError(f"stub cache entry {final} was damaged right after it was built: {exc}") from exc


def preload(stubs: StubSet) -> List[ctypes.CDLL]:
    """Load every stub library into the global symbol scope (so DT_NEEDED matches by soname)."""
    return [ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL) for path in stubs.libraries()]
