"""The run-folder lock on file systems without flock (issue 23): an O_EXCL lock file that still excludes a second
writer, taken over only when provably stale. The sweep folder uses the same lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys

import pytest

from injflow.errors import RunLockedError
from injflow.rundir import RunDir, RunLock


@pytest.fixture
def no_flock(monkeypatch):
    """A file system whose flock fails (as many cluster mounts do): every flock raises ENOLCK."""

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_without_flock_a_second_writer_is_still_refused(tmp_path, no_flock):
    run = RunDir(tmp_path / "run")
    with run.lock("first writer"):
        held = json.loads((run.path / ".lock.held").read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["purpose"] == "first writer"
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()} .*first writer"):
            run.lock("second writer").acquire()
        assert json.loads((run.path / ".lock.held").read_text())["purpose"] == "first writer"  # the refusal kept it
    assert not (run.path / ".lock.held").exists()  # released
    with run.lock("second writer"):
        pass


def test_without_flock_only_a_provably_stale_lock_is_taken_over(tmp_path, no_flock):
    held = tmp_path / ".lock.held"
    # a holder on this host whose process is gone: stale, taken over
    held.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "purpose": "killed fit"}))
    with RunLock(tmp_path / ".lock", "sweep"):
        assert json.loads(held.read_text())["pid"] == os.getpid()
    # a holder on another machine cannot be checked: refused
    held.write_text(json.dumps({"pid": dead_pid(), "host": "another-node", "purpose": "fit"}))
    with pytest.raises(RunLockedError, match="on another-node"):
        RunLock(tmp_path / ".lock", "sweep").acquire()
    # an unreadable lock file (a holder killed while writing it) is not provably stale either: the message names it
    held.write_text("")
    with pytest.raises(RunLockedError, match=r"\.lock\.held cannot be read; delete it"):
        RunLock(tmp_path / ".lock", "sweep").acquire()
    assert held.exists()


def test_flock_holder_respects_a_live_lock_file_of_a_flockless_mount(tmp_path):
    # two machines may disagree about flock on one network folder: the flock path checks the O_EXCL file too
    held = tmp_path / ".lock.held"
    held.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": "fit elsewhere"}))
    with pytest.raises(RunLockedError, match="fit elsewhere"):
        RunLock(tmp_path / ".lock", "fit").acquire()
    held.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "purpose": "killed"}))
    with RunLock(tmp_path / ".lock", "fit"):  # stale: ignored
        pass
