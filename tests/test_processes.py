"""``offroadseg.processes``: whether the process that left something behind is still there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from offroadseg.processes import pid_alive, process_start


def test_a_pid_with_its_start_time_names_one_process() -> None:
    started = process_start(os.getpid())
    if started is None:
        pytest.skip("no /proc on this system")
    assert started > 0 and process_start(os.getpid()) == started  # read again: the same
    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), started)
    assert not pid_alive(os.getpid(), started + 1)  # the pid of a later process than the one recorded
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_start(child.pid) not in (None, started)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid) and not pid_alive(child.pid, started) and process_start(child.pid) is None
