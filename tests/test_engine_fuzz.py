"""Regressions found by fuzzing the CPU engine as a hostile user would (crashes, hangs, wrong results).

Probes that could crash run in a child process, whose exit status and output are checked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_exit_while_daemon_threads_are_inside_calls():
    """Daemon threads still inside svdvals/metrics calls when the interpreter exits: Python ends a
    thread that takes the GIL back during finalization with pthread_exit, whose unwinding through the
    GIL guard's destructor aborted the whole process ("terminate called without an active exception",
    exit status 134); and exit() then tore OpenBLAS down under the BLAS calls still running (a
    segfault or a hang). The process must exit normally."""
    r = _run_child(
        """
        import sys, threading, time
        import numpy as np
        import rankscope as rs

        x = np.random.default_rng(0).standard_normal((1000, 40, 40)).astype(np.float32)
        y = np.random.default_rng(1).standard_normal((2, 300, 280))

        def loop(f):
            while True:
                f()

        calls = (lambda: rs.svdvals(x), lambda: rs.svdvals(y, method="gram"), lambda: rs.svdvals(y, method="exact"),
                 lambda: rs.matrix_rank(x))
        for f in calls:
            threading.Thread(target=loop, args=(f,), daemon=True).start()
        time.sleep(0.3)
        print("exiting", flush=True)
        sys.exit(0)
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == "exiting\n"
    assert "terminate" not in r.stderr
