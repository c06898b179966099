"""Run a program that the kernel signals when the process that started it dies (Linux).

    python -I -S die_with_parent.py PARENT_PID SIGNUM PROGRAM [ARGUMENT ...]

arms prctl(PR_SET_PDEATHSIG, SIGNUM) in this fresh interpreter, signals itself at once if its
parent is no longer PARENT_PID (the parent died before the prctl, so nobody would signal it),
then execs PROGRAM, which keeps the setting. The supervisor (shards/local/supervisor.py)
starts its children through this instead of a preexec_fn: a preexec_fn runs Python in the
forked copy of a threaded process, whose after-fork hooks can spin forever on state another
thread held at the fork (seen once: a child stuck in threading._after_fork before its exec,
and its parent, blocked in the spawn's C code, never timing out). Standard library only, and
run isolated without site, so it starts in milliseconds and imports nothing of the project.
"""

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: die_with_parent.py PARENT_PID SIGNUM PROGRAM [ARGUMENT ...]")
    parent, signum, program = int(argv[0]), int(argv[1]), argv[2]
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum) != 0:
        sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
    os.execv(program, argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
