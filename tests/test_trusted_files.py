"""The trust rule for what the package loads from disk, and its writes: no link followed, no
other user's file trusted, modes exact whatever the umask."""

import os
import stat

import pytest

from torchair_plugin.trusted_files import (
    UntrustedPath,
    check_trusted,
    fallback_directory,
    open_lock,
    private_directory,
    write_atomic,
)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user (CI runs as root)")


def _nobody():
    import pwd

    return pwd.getpwnam("nobody")


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_directory_is_0700_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        made = private_directory(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert _mode(made) == _mode(made.parent) == 0o700


def test_a_world_writable_directory_is_refused_with_the_mode_and_the_fix(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UntrustedPath) as error:
        private_directory(shared)
    message = str(error.value)
    assert str(shared) in message and "mode 0777" in message and f"chmod go-w {shared}" in message
    assert len(message.splitlines()) == 1


@as_root
def test_a_directory_of_another_user_is_refused_naming_the_owner(tmp_path):
    other = tmp_path / "theirs"
    other.mkdir(mode=0o755)
    os.chown(other, _nobody().pw_uid, _nobody().pw_gid)
    with pytest.raises(UntrustedPath, match=r"owned by nobody \(uid \d+\), not by you"):
        private_directory(other)


@as_root
def test_a_file_of_another_user_is_not_trusted_inside_a_trusted_directory(tmp_path):
    library = tmp_path / "libstub.so"
    library.write_bytes(b"\x7fELF")
    check_trusted(library, directory=False)
    os.chown(library, _nobody().pw_uid, _nobody().pw_gid)
    with pytest.raises(UntrustedPath, match="owned by nobody"):
        check_trusted(library, directory=False)


def test_a_link_is_never_trusted(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UntrustedPath, match="is a symbolic link"):
        private_directory(tmp_path / "link")


def test_write_atomic_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root-only secret")
    victim.chmod(0o600)
    entry = private_directory(tmp_path / "entry")
    (entry / "manifest.json").symlink_to(victim)
    old = os.umask(0o000)
    try:
        written = write_atomic(entry, "manifest.json", b"{}", mode=0o644)
    finally:
        os.umask(old)
    assert victim.read_text() == "root-only secret" and _mode(victim) == 0o600
    assert not written.is_symlink() and written.read_bytes() == b"{}" and _mode(written) == 0o644
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json"]  # no temporary left


def test_write_atomic_leaves_no_temporary_when_it_fails(tmp_path):
    entry = private_directory(tmp_path / "entry")
    (entry / "occupied").mkdir()
    with pytest.raises(OSError):
        write_atomic(entry, "occupied", b"data")  # a directory cannot be replaced by a file
    assert sorted(p.name for p in entry.iterdir()) == ["occupied"]


def test_a_lock_file_link_is_refused_and_its_target_never_created(tmp_path):
    target = tmp_path / "created-through-the-link"
    (tmp_path / ".lock").symlink_to(target)
    with pytest.raises(OSError):
        open_lock(tmp_path / ".lock")
    assert not target.exists()
    descriptor = open_lock(tmp_path / "fresh.lock")
    os.close(descriptor)
    assert _mode(tmp_path / "fresh.lock") == 0o600


def test_the_fallback_is_private_and_new_each_time():
    first, second = fallback_directory(), fallback_directory()
    try:
        assert first != second and _mode(first) == 0o700
        check_trusted(first, directory=True)
    finally:
        first.rmdir()
        second.rmdir()
