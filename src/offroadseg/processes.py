"""Processes on this machine: whether the one that left something behind (a lock, a running trial, a
half-written cache) is still there."""

from __future__ import annotations

import os

__all__ = ["pid_alive", "process_start"]


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux ``/proc/<pid>/stat``), or None where
    that cannot be read (no such process, no ``/proc``): with the pid, it names one process, as a pid
    alone does not once the pid is given to a later process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # the fields after the command name, which is in parentheses and may hold spaces: starttime is
        # field 22 of the line, the 20th after the name
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True while a process ``pid`` exists on this machine (also one of another user's); with
    ``started`` (its :func:`process_start` when it was recorded), only while it is that same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None:
        now = process_start(pid)
        return now is None or now == started  # where the start cannot be read, the pid alone decides
    return True
