"""Regressions found by fuzzing the CPU engine as a hostile user would (crashes, hangs, wrong results).

Probes that could crash run in a child process, whose exit status and output are checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import rankscope as rs
import torch
from rankscope import _core


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


def test_huge_batch_of_empty_matrices():
    """(10¹¹, 0, 3): nothing to compute and an empty result, but the core built a reference per
    matrix first (MemoryError; 5·10⁷ of them took 10 s and 4.7 GB)."""
    out = rs.svdvals(np.zeros((10**11, 0, 3)))
    assert out.shape == (10**11, 0)
    assert rs.svdvals(torch.zeros((10**9, 4, 0), dtype=torch.bfloat16)).shape == (10**9, 0)
    assert rs.svdvals(np.zeros((3, 0, 0)), method="exact", dtype="float32").dtype == np.float32


def test_set_num_threads_far_below_zero_restores_the_default():
    """n <= 0 restores the default; n < -2³¹ raised pybind11's 'incompatible function arguments'."""
    before = rs.get_num_threads()
    try:
        rs.set_num_threads(1)
        rs.set_num_threads(-(2**40))
        assert rs.get_num_threads() == _core.available_cpus() or "RANKSCOPE_NUM_THREADS" in os.environ
    finally:
        rs.set_num_threads(before)


def test_participation_ratio_of_no_samples_is_quiet():
    """N = 0 samples: 0.0 (no covariance), without numpy's 'Mean of empty slice' RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rs.participation_ratio(np.zeros((0, 3))) == 0.0
        assert rs.participation_ratio(np.zeros((2, 0, 3))).tolist() == [0.0, 0.0]


class _DLPackOnly:
    """A host array that only DLPack can read (as bfloat16 from a framework numpy does not know)."""

    def __init__(self, t):
        self.t = t

    def __dlpack__(self, **kwargs):
        return self.t.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.t.__dlpack_device__()


def test_participation_ratio_of_a_dlpack_only_array():
    """svdvals and the spectrum metrics read bfloat16 DLPack-only arrays; participation_ratio failed
    with "float() argument must be a string or a real number, not '_DLPackOnly'". It now names the
    input and what to do."""
    t = torch.randn(6, 4).bfloat16()
    assert rs.matrix_rank(_DLPackOnly(t)) == 4
    with pytest.raises(TypeError, match=r"x: .*bfloat16.*DLPack.*float32"):
        rs.participation_ratio(_DLPackOnly(t))
