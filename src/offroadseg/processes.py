"""Processes on this machine: whether the one that left something behind (a lock, a running trial, a
half-written cache) is still there."""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """True while a process ``pid`` exists on this machine (also one of another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
