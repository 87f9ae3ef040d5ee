"""A watchdog for the local Ray that ``videofusion batch`` starts: when the command ends in any way, kill -9
included, every process Ray started for it ends too, at once.

Ray's own clean-up follows a killed driver slowly: its dashboard and runtime-env agents notice that the
raylet died, then wait a minute trying to report it to the Ray head that died with it. The watchdog is a
small separate process (standard library only; Linux's /proc) that keeps a list of the command's descendant
processes and, when the pipe from the command closes (the command exited or was killed), sends SIGKILL to
those still running. Joining a running cluster (``--ray-address``) starts no watchdog: those processes are
not this command's.
"""
from __future__ import annotations

import os
import subprocess
import sys

_WATCHDOG = r"""
import os, select, signal, sys
parent, me = int(sys.argv[1]), os.getpid()

def table():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            kids.setdefault(int(fields[1]), []).append((int(name), fields[19]))  # ppid; start time
    return kids

def descendants(pid):
    kids, found, todo = table(), {}, [pid]
    while todo:
        for child, start in kids.get(todo.pop(), []):
            if child != me:
                found[child] = start
                todo.append(child)
    return found

def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None

known = {}
while not select.select([sys.stdin], [], [], 0.5)[0]:
    known.update(descendants(parent))
for pid, start in known.items():
    if start_time(pid) == start:  # still the same process, not a new one with a reused pid
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def start_watchdog() -> subprocess.Popen | None:
    """Start the watchdog of this process's descendants (None where there is no /proc). Keep the returned
    object alive while Ray runs; :func:`stop_watchdog` after ``ray.shutdown()``."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen([sys.executable, "-I", "-c", _WATCHDOG, str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_watchdog(watchdog: subprocess.Popen | None) -> None:
    """Close the pipe (the watchdog kills what is left of Ray's processes and exits) and wait for it."""
    if watchdog is not None:
        watchdog.stdin.close()
        watchdog.wait(timeout=30)
