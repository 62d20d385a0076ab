"""The stub cache under the trust rule: no library another user could have written is loaded,
no planted link is followed, and capture still works (in a private directory) when the
configured cache is refused."""

import json
import os
import shutil
import stat

import pytest
import torch

from torchair_plugin import environment
from torchair_plugin._process_state import STATE
from torchair_plugin.testing import CannLessUnavailable, _stubs
from torchair_plugin.testing._torchair_import import native_modules

pytestmark = pytest.mark.skipif(environment.c_compiler() is None, reason="no C compiler: install gcc")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user (CI runs as root)")


def _modules():
    try:
        return native_modules()
    except CannLessUnavailable as exc:
        pytest.skip(str(exc))


def _build(root):
    return _stubs.ensure_stubs(_modules(), "2.13.0", torch.__version__, root=root)


@pytest.fixture
def fresh_fallback(monkeypatch):
    monkeypatch.setattr(STATE, "private_stub_root", None)


def _nobody():
    import pwd

    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def test_a_new_cache_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        entry = _build(tmp_path / "cache")
    finally:
        os.umask(old)
    for directory in (tmp_path / "cache", tmp_path / "cache" / "stubs", entry.directory):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    for path in entry.directory.iterdir():
        assert stat.S_IMODE(os.lstat(path).st_mode) & 0o022 == 0, path


def test_a_world_writable_root_is_refused_and_the_stubs_built_privately(tmp_path, fresh_fallback, capfd):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    entry = _build(shared)
    err = capfd.readouterr().err
    assert f"not using the stub cache: {shared}: is writable by group or others (mode 0777)" in err
    assert not (shared / "stubs").exists() and STATE.private_stub_root in entry.directory.parents
    assert entry.libraries() and all(path.exists() for path in entry.libraries())


@as_root
def test_a_root_of_another_user_is_refused_naming_the_owner(tmp_path, fresh_fallback, capfd):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, *_nobody())
    entry = _build(theirs)
    assert "owned by nobody" in capfd.readouterr().err
    assert theirs not in entry.directory.parents


@as_root
def test_a_swapped_library_with_a_matching_manifest_is_never_loaded(tmp_path):
    entry = _build(tmp_path / "cache")
    victim = entry.sonames[0] if entry.sonames else entry.all_symbols
    # Another user swaps a library and rewrites the manifest to match: the digest check passes.
    victim.write_bytes(victim.read_bytes() + b"\0planted")
    manifest = json.loads((entry.directory / "manifest.json").read_text())
    manifest["sha256"][victim.name] = _stubs._sha256(victim)
    (entry.directory / "manifest.json").write_text(json.dumps(manifest))
    os.chown(victim, *_nobody())
    with pytest.raises(_stubs._DamagedEntry, match="not trusted.*owned by nobody"):
        _stubs._load_entry(entry.directory, built=False)
    rebuilt = _build(tmp_path / "cache")  # the entry is rebuilt by and for this user
    assert os.stat(rebuilt.directory / victim.name).st_uid == os.geteuid()
    assert b"planted" not in (rebuilt.directory / victim.name).read_bytes()


def test_a_link_planted_as_the_lock_is_not_followed(tmp_path):
    root = tmp_path / "cache"
    first = _build(root)
    shutil.rmtree(first.directory)  # force a rebuild, which takes the lock
    target = tmp_path / "created-through-the-link"
    (first.directory.parent / f".{first.directory.name}.lock").unlink(missing_ok=True)
    (first.directory.parent / f".{first.directory.name}.lock").symlink_to(target)
    with pytest.raises(_stubs.CacheUnusable):
        _build(root)
    assert not target.exists()


def test_a_link_planted_as_an_entry_file_makes_it_untrusted_and_rebuilt(tmp_path):
    entry = _build(tmp_path / "cache")
    secret = tmp_path / "secret"
    secret.write_text("keep")
    (entry.directory / "manifest.json").unlink()
    (entry.directory / "manifest.json").symlink_to(secret)
    rebuilt = _build(tmp_path / "cache")
    assert secret.read_text() == "keep"
    assert not (rebuilt.directory / "manifest.json").is_symlink()
