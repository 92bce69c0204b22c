"""Review of the Ray scan (rankscope.scan(..., ray=...)) as a user running zoo scans on a cluster:
arguments checked before connecting, tasks no node can run, unreachable addresses.

Reuses the module-scoped local Ray instance (2 CPUs) and helpers of test_distributed. Cases that
used to hang run in a subprocess whose timeout only guards the test run (it asserts no timing).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import rankscope as rs
from rankscope.scan import distributed
from rankscope.scan.examples import example_model
from safetensors.numpy import save_file
from test_distributed import assert_same_report, ray_local  # noqa: F401 (ray_local: its fixture, used by name)

#: seconds a subprocess may take before the test counts it as hung (a guard, not a measurement)
HANG = 120


@pytest.fixture
def model(tmp_path) -> str:
    path = str(tmp_path / "m.safetensors")
    save_file(example_model(seed=1), path)
    return path


def _run(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=HANG,
                          check=False, env=env)


def test_resource_arguments_are_checked_before_connecting(model, monkeypatch):
    """A bad num_cpus/num_gpus started a local Ray instance (or waited on the cluster's address)
    before being refused; num_cpus=inf gave a bare OverflowError."""
    def connect(*a, **k):
        raise AssertionError("connected to Ray before checking the arguments")

    monkeypatch.setattr(distributed, "_connect", connect)
    for bad in ("2", 0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="num_cpus must be a positive number"):
            rs.scan(model, ray=True, num_cpus=bad)
    for bad in ("1", -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="num_gpus must be a non-negative number"):
            rs.scan(model, ray="10.0.0.1:6379", num_gpus=bad)
    with pytest.raises(ValueError, match="needs num_gpus > 0"):
        rs.scan(model, ray=True, device="cuda", num_gpus=0)


@pytest.mark.usefixtures("ray_local")
def test_numpy_numbers_are_accepted(model):
    """num_cpus, num_gpus and max_retries from a config (np.int64, np.float32) were refused with
    'must be a non-negative int, got 1', as min_dim was before (5c491e1)."""
    want = rs.scan(model, progress=False)
    got = rs.scan(model, ray=True, progress=False, num_cpus=np.int64(1), num_gpus=np.float32(0),
                  max_retries=np.int64(1))
    assert_same_report(got, want)
    with pytest.raises(ValueError, match="max_retries must be a non-negative int"):
        rs.scan(model, ray=True, max_retries=np.float64(1.5))
    with pytest.raises(ValueError, match="max_retries must be a non-negative int"):
        rs.scan(model, ray=True, max_retries=np.bool_(True))


_ON_CLUSTER = """
import sys
import ray
import rankscope as rs
ray.init(address=sys.argv[2], logging_level="ERROR", log_to_driver=False)
try:
    rs.scan(sys.argv[1], ray=True, progress=False, num_cpus=float(sys.argv[3]))
except ValueError as e:
    print("ValueError:", e)
else:
    print("scanned")
"""


@pytest.mark.usefixtures("ray_local")
def test_more_cpus_per_task_than_any_node_fails_at_once(model):
    """num_cpus=3 on a cluster whose nodes have 2 CPUs: every task stayed pending for ever (Ray
    never schedules an infeasible task), as device='cuda' without GPUs would, which fails at once."""
    import ray

    address = ray.get_runtime_context().gcs_address
    r = _run(_ON_CLUSTER, model, address, "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ValueError: num_cpus=3 asks each Ray task for more CPUs than any node of the Ray cluster has (2)" \
        in r.stdout, r.stdout
    assert "scanned" in _run(_ON_CLUSTER, model, address, "2").stdout  # a whole node is fine


def test_check_fits():
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 4.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a dead node runs nothing
    distributed.check_fits({"num_cpus": 8.0, "num_gpus": 0.5}, nodes)
    with pytest.raises(ValueError, match=r"num_gpus=2 asks each Ray task for more GPUs than any node .* \(1\)"):
        distributed.check_fits({"num_cpus": 1.0, "num_gpus": 2.0}, nodes)
    with pytest.raises(ValueError, match=r"num_cpus=16 .* \(8\)"):
        distributed.check_fits({"num_cpus": 16.0, "num_gpus": 0.0}, nodes)


@pytest.mark.usefixtures("ray_local")
def test_unreachable_address_fails_at_once(model):
    """ray='host:port' where nothing listens: Ray retried for more than five minutes (an unknown
    host: over a minute) before failing; now one ConnectionError naming the address. The same for
    ray=True with RAY_ADDRESS set; a live address still scans."""
    import ray

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys, rankscope\n"
            "try:\n    r = rankscope.scan(sys.argv[1], ray=sys.argv[2] or True, progress=False)\n"
            "except ConnectionError as e:\n    print('ConnectionError:', e)\n"
            "else:\n    print('scanned', len(r.scanned))\n")
    for address in (f"127.0.0.1:{port}", "no-such-host.invalid:6379"):
        r = _run(code, model, address)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"ConnectionError: ray={address!r}: cannot connect to the Ray cluster: nothing answers at" \
            in r.stdout, (r.stdout, r.stderr[-2000:])
    r = _run(code, model, "", env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert f"ConnectionError: RAY_ADDRESS='127.0.0.1:{port}': cannot connect" in r.stdout, (r.stdout, r.stderr[-2000:])
    live = ray.get_runtime_context().gcs_address
    r = _run(code, model, live)
    assert f"scanned {len(rs.scan(model, progress=False).scanned)}" in r.stdout, (r.stdout, r.stderr[-2000:])
