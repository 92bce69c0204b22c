"""The console script (`rankscope scan --example`, `rankscope info`) and build_info(); the scan
options themselves are tested in test_scan.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rankscope as rs
from rankscope import cli
from rankscope._backend import cuda_available

PLANTED = "blocks.1.mlp.fc2.weight"
INFO_KEYS = {"cpu_isa", "blas", "num_threads", "available_cpus", "compact_max_k", "cuda", "cuda_built",
             "cuda_devices"}


def _strict_json(text: str):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def _flagged_in_table(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if "RANK COLLAPSE" in line]


def test_example_model_planted_layer():
    model = cli.example_model()
    s = np.linalg.svd(model[PLANTED].astype(np.float64), compute_uv=False)
    assert np.all(s[:6] >= 0.49) and np.all(s[6:] < 1e-7)
    assert model[PLANTED].dtype == np.float32


def test_info(capsys):
    assert cli.main(["info"]) == 0
    info = _strict_json(capsys.readouterr().out)
    assert info == json.loads(json.dumps(rs.build_info()))


def _console_script() -> str:
    script = Path(sys.executable).parent / "rankscope"
    found = str(script) if script.exists() else shutil.which("rankscope")
    if not found:
        pytest.skip("the rankscope console script is not installed next to this interpreter")
    return found


def test_console_script_scan_and_info():
    exe = _console_script()
    env = dict(os.environ, RANKSCOPE_NUM_THREADS="1")
    r = subprocess.run(
        [exe, "scan", "--example"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert _flagged_in_table(r.stdout) == [PLANTED]
    r = subprocess.run(
        [exe, "info"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert r.returncode == 0, r.stderr
    info = _strict_json(r.stdout)
    assert set(info) == INFO_KEYS and info["num_threads"] == 1
    r = subprocess.run([exe, "scan"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--example" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "rankscope.cli", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and set(_strict_json(r.stdout)) == INFO_KEYS


def test_build_info():
    info = rs.build_info()
    assert set(info) == INFO_KEYS
    assert info["cpu_isa"] in ("avx512", "avx2", "generic")
    assert isinstance(info["blas"], str) and "OpenBLAS" in info["blas"]
    assert info["num_threads"] == rs.get_num_threads() >= 1
    assert info["available_cpus"] >= 1
    assert info["compact_max_k"] == rs._core.compact_max_k() >= 1
    assert info["cuda"] is cuda_available()
    assert rs.__version__ and all(hasattr(rs, name) for name in rs.__all__)
