"""One run per output directory: an exclusive lock held for the run's life.

Training, inheritance, multi-round and scoring runs take `hold_run_lock(directory, what)` before they
read or write anything there; a second run on the same directory (a resubmitted job while the old
one still runs) refuses at once, naming the directory and the holder (host, pid, start time, command).

The lock is `fcntl.flock` on ``DIRECTORY/.run.lock``; the file holds the holder's record as JSON.
The kernel drops a flock when its process dies, however it dies (SIGKILL, OOM), so a crashed run
never blocks the next one on a local filesystem; the next holder finds the dead run's record and
says it takes the lock over. On a shared filesystem across hosts a flock may not be seen by other
hosts (NFS without lock support, some parallel filesystems); there the record is the evidence: a
record naming a live pid on this host, or any pid on another host, refuses the run, and only a
record of a pid that is gone on this host is taken over. If a run on another host is known to be
dead, delete the lock file by hand. Where flock is not supported at all (ENOLCK, EOPNOTSUPP) the
record alone decides, as just said.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".run.lock"


class RunLockedError(ValueError):
    """Another run holds the directory's lock (a ValueError: the CLI reports it without a traceback, exit 2)."""

    def __init__(self, directory: Path, holder: dict, lock_file: Path):
        self.directory, self.holder = directory, holder
        super().__init__(f"{directory}: another run is using this directory ({describe(holder)}); "
                         f"wait for it to finish or stop it, or choose another output directory. If that run "
                         f"is gone (a run on another host sharing this filesystem), delete {lock_file}")


def describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"{holder.get('what', 'a run')} pid {holder.get('pid')} on host {holder.get('host')}, started {when}: "
            f"{holder.get('command', '')}").rstrip(": ")


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_record(handle) -> dict:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _record_blocks(record: dict) -> bool:
    """Without a working flock: does the record left in the file name a run that may still live?"""
    if not record:
        return False
    return record.get("host") != socket.gethostname() or pid_alive(record.get("pid"))


@contextmanager
def hold_run_lock(directory: str | Path, what: str, announce=None, remove: bool = False) -> Iterator[Path]:
    """Hold DIRECTORY's run lock (creating the directory) for the `with` body; raises RunLockedError
    naming the holder when another run has it. `announce` (default: stderr) hears of a stale lock
    taken over. `remove`: delete the lock file on release, and the directory if that empties it (a
    directory that only lives during the run, such as scoring's parts folder)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_file = directory / LOCK_NAME
    say = announce or (lambda text: print(text, file=sys.stderr, flush=True))
    handle = open(lock_file, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(directory, _read_record(handle), lock_file) from None
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            locked = False  # no flock on this filesystem: the record alone decides
        previous = _read_record(handle)
        if not locked and _record_blocks(previous):
            raise RunLockedError(directory, previous, lock_file)
        if previous:
            say(f"note: {directory}: taking over the lock of a run that is no longer running ({describe(previous)})")
        record = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                  "command": " ".join(sys.argv)[:500]}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        try:
            yield lock_file
        finally:  # an empty file: released cleanly (a record left behind means the holder died)
            handle.seek(0)
            handle.truncate()
            handle.flush()
            if remove:
                lock_file.unlink(missing_ok=True)
                with suppress(OSError):  # not empty: its owner removes it
                    directory.rmdir()
    finally:
        handle.close()  # closing drops the flock



def hold_on_rank0(stack: ExitStack, directory: str | Path, what: str, rank: int, world: int,
                  remove: bool = False) -> None:
    """Rank 0 enters DIRECTORY's run lock into `stack`; every rank of the `world` calls this, and all of
    them raise if rank 0 could not take it (so none waits for it in a later collective)."""
    from pangu_pro.collective import any_rank

    refused = None
    try:
        if rank == 0:
            stack.enter_context(hold_run_lock(directory, what, remove=remove))
    except RunLockedError as err:
        refused = err
    if any_rank(refused is not None, world):
        raise refused or RuntimeError(f"rank {rank}: stopping: rank 0 could not lock {directory} (another run "
                                      "is using it)")
