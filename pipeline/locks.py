"""The run lock: one process (and the stage processes it starts) works on a run at a time.

An ``fcntl.flock`` on ``runs/<run_id>/.lock``: the kernel releases it when the holder dies, so
there is nothing to clean by hand. A stage's process receives the same open file (so
the lock is held while either lives) and dies with its parent (:func:`die_with_parent`). A second
run of the same run id is refused with a line naming the holder. Re-entrant within a process
(the flow's tasks and the stages they run share it).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from .errors import UserError

LOCK_FILE = ".lock"
_held: dict[str, list] = {}          # run path -> [fd, depth]
_guard = threading.Lock()


class RunLocked(UserError):
    """Another process holds the run."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('what') or 'hierarcaps'}, since {since})"


class RunLock:
    """``with store.lock("stage seed"):`` holds the run; raises RunLocked when another process does."""

    def __init__(self, run_path: Path, what: str = ""):
        self.run_path = Path(run_path)
        self.what = what
        self.key = str(self.run_path.resolve())

    @property
    def fd(self) -> int:
        return _held[self.key][0]

    def __enter__(self) -> "RunLock":
        with _guard:
            if self.key in _held:
                _held[self.key][1] += 1
                return self
            self.run_path.mkdir(parents=True, exist_ok=True)
            path = self.run_path / LOCK_FILE
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(f"run {self.run_path.name} is in use by {_holder(path)}; "
                                "wait for it to finish or stop it") from None
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                                     "since": time.time()}).encode())
            _held[self.key] = [fd, 1]
        return self

    def __exit__(self, *exc) -> None:
        with _guard:
            entry = _held.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self.key]
                os.close(entry[0])          # closing the last descriptor releases the flock


class InheritedLock:
    """Carries a held run lock into a stage process: pickled while the process starts, it hands
    the child a duplicate of the locked file (multiprocessing's fd passing), so the lock stays held
    as long as either process lives."""

    def __init__(self, lock: RunLock):
        self.key, self.fd = lock.key, lock.fd

    def __reduce__(self):
        from multiprocessing import reduction

        return (_adopt, (self.key, reduction.DupFd(self.fd)))


def _adopt(key: str, dup) -> str:
    _held[key] = [dup.detach(), 1]
    return key


def die_with_parent(parent_pid: int) -> None:
    """In a stage's process: end when the parent ends, so nothing commits after it is gone.
    Linux: the kernel's parent-death signal (from a forkserver, the forkserver's, which ends when
    the parent does); everywhere (and as a backstop) a watcher thread on ``parent_pid`` itself."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    direct = os.getppid()                                   # the parent, or the forkserver it uses

    def gone() -> bool:
        if os.getppid() != direct:
            return True
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    if gone() or (direct == 1 and parent_pid != 1):         # it died before the signal was armed
        os._exit(70)

    def watch():
        while True:
            time.sleep(1.0)
            if gone():
                os._exit(70)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def stage_process(parent: int, lock: str, env: dict, payload: bytes, conn) -> None:
    """Entry of a stage's process. The parent-death signal is armed before anything heavy is
    imported or unpickled, so a parent killed during start-up leaves nothing behind. The parent's
    environment is taken over (a forkserver's child inherits the forkserver's)."""
    die_with_parent(parent)
    os.environ.clear()
    os.environ.update(env)
    import pickle

    from .execute import child_main

    child_main(*pickle.loads(payload), conn)      # the parent's own pickle of the stage, never data
