"""Distributed scans on Ray (rankscope.scan(..., ray=...)): same rows as one process, faults, resume.

One local Ray instance serves the whole module (2 CPUs, no dashboard), shut down at the end; the
tests that need it are skipped when ray is not installed. Failures are planted by replacing
``distributed._scan_model`` (the function each task runs) on the driver with a closure that Ray
pickles by value: it records every attempt as a file in a folder, may fail, then runs the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import rankscope as rs
from rankscope import cli
from rankscope.scan import distributed
from rankscope.scan.examples import EXAMPLE_COLLAPSED, example_model
from safetensors.numpy import save_file

#: Columns that may differ between two runs on the same files. None: a row holds no timings, and
#: the spectra of a model do not depend on which other models share its engine calls. (With
#: randomize=True the shuffled-ESD columns do: test_randomized_columns_are_those_of_each_model_alone.)
RUN_DEPENDENT: tuple[str, ...] = ()


# ---- a small zoo --------------------------------------------------------------------------------


def _planted_npz(rng) -> dict:
    u, _ = np.linalg.qr(rng.standard_normal((48, 48)))
    v, _ = np.linalg.qr(rng.standard_normal((33, 33)))
    s = np.concatenate([np.linspace(2.0, 1.0, 4), np.full(29, 1e-10)])  # rank 4 of 33
    return {"low.weight": ((u[:, :33] * s) @ v.T).astype(np.float32),
            "dense.weight": rng.standard_normal((97, 33)).astype(np.float32),
            "norm.weight": np.ones(33, dtype=np.float32)}


def _zoo(root, rng) -> dict:
    """zoo/: 3 safetensors models (each with the planted layer of example_model), a sharded folder
    (two shards, one model), an npz model with a planted rank-4 layer, a model of 1-D tensors only,
    and a corrupt file."""
    zoo = root / "zoo"
    (zoo / "sub").mkdir(parents=True)
    for i in range(3):
        save_file(example_model(seed=i), str(zoo / f"m{i}.safetensors"))
    shard = zoo / "sharded"
    shard.mkdir()
    w = example_model(seed=7)
    names = sorted(w)
    parts = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for f, ns in parts.items():
        save_file({n: w[n] for n in ns}, str(shard / f))
    (shard / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: f for f, ns in parts.items() for n in ns}}))
    np.savez(zoo / "sub" / "n0.npz", **_planted_npz(rng))
    save_file({"norm.weight": np.ones(8, dtype=np.float32)}, str(zoo / "vectors.safetensors"))
    (zoo / "broken.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    return {"root": zoo, "models": ["broken", "m0", "m1", "m2", "sharded", "sub/n0", "vectors"]}


def assert_same_report(got, want) -> None:
    """Rows equal column by column (exactly; NaN where NaN), same order; eigenvalues equal."""
    a, b = got.layers, want.layers
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for c in a.columns:
        if c in RUN_DEPENDENT:
            continue
        pd.testing.assert_series_equal(a[c], b[c], check_exact=True, obj=f"column {c!r}")
    assert got.evals.keys() == want.evals.keys()
    for k in want.evals:
        np.testing.assert_array_equal(got.evals[k], want.evals[k])
    pd.testing.assert_frame_equal(got.models, want.models)


def _hook(marker_dir, target: str | None = None, fail: str | None = None):
    """A stand-in for distributed._scan_model: one file per attempt in `marker_dir`; on the model
    `target`, `fail` = "exit_once" (the worker process dies on the first attempt), "exit" (on every
    attempt), "raise" (every attempt raises) or "hang" (waits for a file named "release")."""
    marker_dir = str(marker_dir)

    def task(path, name, opts, base, threads):
        import os
        import time

        from rankscope.scan import distributed as real  # the worker's module: not replaced there

        stem = name.replace("/", "__")
        attempt = sum(f.startswith(stem + ".") for f in os.listdir(marker_dir))
        open(os.path.join(marker_dir, f"{stem}.{attempt}"), "w").close()
        if name == target:
            if fail == "exit" or (fail == "exit_once" and attempt == 0):
                os._exit(1)
            if fail == "raise":
                raise RuntimeError(f"planted failure, attempt {attempt}")
            if fail == "hang":
                t0 = time.time()
                while not os.path.exists(os.path.join(marker_dir, "release")) and time.time() - t0 < 60:
                    time.sleep(0.05)
        return real._scan_model(path, name, opts, base, threads)

    os.makedirs(marker_dir, exist_ok=True)
    return task


def _attempts(marker_dir) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in os.listdir(marker_dir):
        if f != "release":
            stem = f.rsplit(".", 1)[0].replace("__", "/")
            out[stem] = out.get(stem, 0) + 1
    return out


# ---- the Ray instance ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install \"rankscope[ray]\")")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def zoo(tmp_path, rng):
    return _zoo(tmp_path, rng)


# ---- without Ray --------------------------------------------------------------------------------


def test_single_machine_path_never_imports_ray(tmp_path):
    save_file(example_model(), str(tmp_path / "m.safetensors"))
    code = ("import sys, rankscope; r = rankscope.scan(sys.argv[1], progress=False); "
            "assert len(r.scanned) > 0; assert 'ray' not in sys.modules, 'ray imported'; "
            "assert 'rankscope.scan.distributed' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.safetensors")], check=True, timeout=120)


def test_without_ray_the_error_names_the_extra(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_file(example_model(), path)
    code = ("import sys; sys.modules['ray'] = None\n"  # import ray now raises ImportError
            "import rankscope\n"
            "try:\n    rankscope.scan(sys.argv[1], ray=True)\nexcept ImportError as e:\n    print(e)\n"
            "else:\n    raise SystemExit('no ImportError')\n"
            "from rankscope import cli\n"
            "assert cli.main(['scan', sys.argv[1], '--ray', '--quiet']) == 2\n")
    r = subprocess.run([sys.executable, "-c", code, path], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'needs ray for distributed scans (ray=...): pip install "rankscope[ray]"' in r.stdout
    assert 'rankscope scan: error: ' in r.stderr and 'pip install "rankscope[ray]"' in r.stderr


def test_bad_arguments(tmp_path, capsys):
    path = str(tmp_path / "m.safetensors")
    for bad in (1, "", "  ", [path]):
        with pytest.raises(TypeError, match="ray must be True, or a Ray address"):
            rs.scan(path, ray=bad)
    with pytest.raises(TypeError, match="in-memory model"):
        rs.scan({"w": np.eye(3)}, ray=True)
    with pytest.raises(TypeError, match=r"source\[1\].*in-memory model"):
        rs.scan([path, {"w": np.eye(3)}], ray=True)
    with pytest.raises(TypeError, match="base.*as a path"):
        rs.scan(path, base={"w": np.eye(3)}, ray=True)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_retries must be a non-negative int"):
            rs.scan(path, ray=True, max_retries=bad)
    with pytest.raises(ValueError, match="max_retries, num_gpus: only for scans on Ray"):
        rs.scan(path, max_retries=2, num_gpus=1)
    with pytest.raises(ValueError, match="conv must be"):  # the scan's own options fail before Ray
        rs.scan(path, ray=True, conv="bad")
    # argparse would take a PATH after a bare --ray as its ADDRESS: refused, with the remedy
    with pytest.raises(SystemExit):
        cli.main(["scan", "--ray", str(tmp_path)])
    assert "not a Ray address" in capsys.readouterr().err


def test_task_resources():
    res = distributed.task_resources
    assert res("cpu", num_cpus=None, num_gpus=None, cluster_gpus=4) == {"num_cpus": 1.0, "num_gpus": 0.0, "device": "cpu"}
    assert res("cuda", num_cpus=2, num_gpus=None, cluster_gpus=1) == {"num_cpus": 2.0, "num_gpus": 1.0, "device": "cuda"}
    assert res("cuda:3", num_cpus=None, num_gpus=0.5, cluster_gpus=8)["device"] == "cuda"  # Ray picks the GPU
    assert res("auto", num_cpus=None, num_gpus=None, cluster_gpus=2)["num_gpus"] == 1.0
    assert res("auto", num_cpus=None, num_gpus=None, cluster_gpus=0)["num_gpus"] == 0.0
    with pytest.raises(ValueError, match="the Ray cluster has none"):
        res("cuda", num_cpus=None, num_gpus=None, cluster_gpus=0)
    with pytest.raises(ValueError, match="needs num_gpus > 0"):
        res("cuda", num_cpus=None, num_gpus=0, cluster_gpus=1)
    for bad in (0, -1, "2"):
        with pytest.raises(ValueError, match="num_cpus must be a positive number"):
            res("cpu", num_cpus=bad, num_gpus=None, cluster_gpus=0)
    with pytest.raises(ValueError, match="num_gpus must be a non-negative number"):
        res("cpu", num_cpus=None, num_gpus=-1, cluster_gpus=0)


# ---- on Ray -------------------------------------------------------------------------------------


def test_rows_equal_the_single_machine_scan(ray_local, zoo, tmp_path, monkeypatch):
    root = zoo["root"]
    want = rs.scan(str(root), progress=False)
    monkeypatch.setattr(distributed, "_scan_model", _hook(tmp_path / "ran"))
    got = rs.scan(str(root), ray=True, progress=False)
    assert_same_report(got, want)
    # one task per model that could be opened: the sharded folder is one; the corrupt file none
    assert _attempts(tmp_path / "ran") == {m: 1 for m in zoo["models"] if m != "broken"}
    assert sorted(got.layers["model"].unique()) == zoo["models"]
    flagged = set(zip(got.flagged["model"], got.flagged["name"]))
    assert {(m, EXAMPLE_COLLAPSED) for m in ("m0", "m1", "m2", "sharded")} <= flagged
    assert ("sub/n0", "low.weight") in flagged
    assert len(got.errors) == 1 and got.errors["path"].iloc[0].endswith("broken.safetensors")
    # a list with two models of one name, a sharded index given as a file, a name=, options
    other = tmp_path / "other"
    other.mkdir()
    save_file(example_model(seed=5), str(other / "m0.safetensors"))
    items = [str(root / "m0.safetensors"), str(other / "m0.safetensors"),
             str(root / "sharded" / "model.safetensors.index.json"), str(root / "sub" / "n0.npz")]
    opts = {"progress": False, "rank_policy": "ww", "mp_fit": True, "min_dim": 30, "split_qkv": True}
    assert_same_report(rs.scan(items, ray=True, **opts), rs.scan(items, **opts))
    assert_same_report(rs.scan(str(root), name="zoo", ray=True, **opts), rs.scan(str(root), name="zoo", **opts))


def test_randomized_columns_are_those_of_each_model_alone(ray_local, zoo):
    """randomize=True draws shuffles from one generator per scan call: in one process a model's draws
    depend on the models sharing its window, on Ray each task seeds its own. Every other column is
    equal; the shuffled-ESD columns equal those of scanning each file alone with the same seed."""
    from rankscope.scan.report import RANDOM_COLUMNS, merge

    root = zoo["root"]
    items = [str(root / "m0.safetensors"), str(root / "m1.safetensors")]
    kw = {"randomize": True, "seed": 3, "progress": False}
    got = rs.scan(items, ray=True, **kw)
    alone = rs.scan.ScanReport(merge(rs.scan(p, **kw).layers for p in items))
    pd.testing.assert_frame_equal(got.layers, alone.layers, check_exact=True)
    together = rs.scan(items, **kw).layers
    drawn = [c for c in together.columns if c in RANDOM_COLUMNS]
    assert "rand_distance" in drawn
    pd.testing.assert_frame_equal(got.layers.drop(columns=drawn), together.drop(columns=drawn), check_exact=True)
    assert not got.layers["rand_distance"].equals(together["rand_distance"])  # else this test shows nothing


def test_delta_scan_on_ray(ray_local, zoo):
    root = zoo["root"]
    items = [str(root / "m1.safetensors"), str(root / "sharded")]
    want = rs.scan(items, base=str(root / "m0.safetensors"), progress=False)
    assert len(want.scanned)
    assert_same_report(rs.scan(items, base=str(root / "m0.safetensors"), ray=True, progress=False), want)
    with pytest.raises(ValueError, match="base model cannot be read"):  # as in one process, before any task
        rs.scan(items, base=str(root / "broken.safetensors"), ray=True, progress=False)


def test_failed_task_is_retried_then_reported(ray_local, zoo, tmp_path, monkeypatch):
    root = zoo["root"]
    want = rs.scan(str(root), progress=False)
    keep = want.layers["model"] != "m1"
    monkeypatch.setattr(distributed, "_scan_model", _hook(tmp_path / "raise", "m1", "raise"))
    got = rs.scan(str(root), ray=True, progress=False, max_retries=2)
    assert _attempts(tmp_path / "raise")["m1"] == 3  # the first try and max_retries more
    err = got.errors.set_index("model").loc["m1"]
    assert "after 2 retries: RuntimeError: planted failure, attempt 2" in err["error"]
    assert err["path"] == str(root / "m1.safetensors") and err["tensor"] == ""
    # everything else completed, with the rows one process gives
    rest = got.layers[got.layers["model"] != "m1"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, want.layers[keep].reset_index(drop=True), check_exact=True)


def test_killed_worker_is_retried(ray_local, zoo, tmp_path, monkeypatch):
    root = zoo["root"]
    want = rs.scan(str(root), progress=False)
    monkeypatch.setattr(distributed, "_scan_model", _hook(tmp_path / "once", "m2", "exit_once"))
    got = rs.scan(str(root), ray=True, progress=False, max_retries=1)
    assert _attempts(tmp_path / "once")["m2"] == 2
    assert_same_report(got, want)
    # without retries the dead worker is the model's error, and the rest completes
    monkeypatch.setattr(distributed, "_scan_model", _hook(tmp_path / "always", "m2", "exit"))
    got = rs.scan(str(root), ray=True, progress=False, max_retries=0)
    assert _attempts(tmp_path / "always")["m2"] == 1
    (err,) = got.errors.loc[got.errors["model"] == "m2", "error"]
    assert err.startswith("Ray task failed after 0 retries: ") and "died" in err.lower()
    assert set(got.scanned["model"]) == set(want.scanned["model"]) - {"m2"}


def test_resume_skips_finished_files(ray_local, zoo, tmp_path, monkeypatch):
    root = zoo["root"]
    out_one, out_ray = tmp_path / "one.csv", tmp_path / "ray.csv"
    rs.scan(str(root), out=str(out_one), progress=False)
    monkeypatch.setattr(distributed, "_scan_model", _hook(tmp_path / "first"))
    first = rs.scan(str(root), out=str(out_ray), ray=True, progress=False)
    assert_same_report(rs.scan.ScanReport.read(out_ray), rs.scan.ScanReport.read(out_one))
    assert len(_attempts(tmp_path / "first")) == 6
    save_file({"l0.weight": np.ones((20, 10), dtype=np.float32)}, str(root / "m1.safetensors"))  # m1 changes
    want = rs.scan(str(root), out=str(out_one), progress=False)
    monkeypatch.setattr(distributed, "_scan_model", _hook(tmp_path / "second"))
    got = rs.scan(str(root), out=str(out_ray), ray=True, progress=False)
    assert _attempts(tmp_path / "second") == {"m1": 1}  # only the changed file; the broken one is listed again
    assert len(got.scanned) == len(first.scanned) - len(first.scanned[first.scanned["model"] == "m1"]) + 1
    got.evals, want.evals = {}, {}  # rows kept from a report file have no eigenvalues, in both
    assert_same_report(got, want)
    assert_same_report(rs.scan.ScanReport.read(out_ray), rs.scan.ScanReport.read(out_one))


_DRIVER = """
import sys
import ray
import rankscope as rs
from rankscope.scan import distributed
sys.path.insert(0, sys.argv[4])
from test_distributed import _hook
distributed._scan_model = _hook(sys.argv[3], "sub/n0", "hang")
ray.init(address=sys.argv[5], logging_level="ERROR", log_to_driver=False)
rs.scan(sys.argv[1], out=sys.argv[2], ray=True, progress=False)
"""


def test_interrupted_scan_keeps_finished_models(ray_local, zoo, tmp_path, monkeypatch):
    """A driver killed (SIGKILL) while one model is in flight: the report at `out` is readable and
    holds every finished model; resuming scans only the lost one and gives the full rows."""
    root, out, marks = zoo["root"], tmp_path / "report.parquet", tmp_path / "marks"
    address = ray_local.get_runtime_context().gcs_address
    args = [sys.executable, "-c", _DRIVER, str(root), str(out), str(marks), os.path.dirname(__file__), address]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finished = {m for m in zoo["models"] if m != "sub/n0"}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if out.exists() and set(rs.scan.ScanReport.read(out).layers["model"]) == finished:
                break
            time.sleep(0.05)
        assert driver.poll() is None, driver.communicate()[1].decode()[-2000:]
    finally:
        driver.kill()
        driver.wait()
        (marks / "release").touch()  # the hung task returns, if Ray has not stopped it already
    partial = rs.scan.ScanReport.read(out)
    assert set(partial.layers["model"]) == finished
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(out.read_bytes())
    monkeypatch.setattr(distributed, "_scan_model", _hook(tmp_path / "resumed"))
    got = rs.scan(str(root), out=str(out), ray=True, progress=False)
    assert _attempts(tmp_path / "resumed") == {"sub/n0": 1}
    assert_same_report(got, rs.scan(str(root), out=str(copy), progress=False))  # one process resuming
    # and, model by model, the rows of a fresh scan (kept rows went through Parquet: values compared)
    fresh = rs.scan(str(root), progress=False).layers
    key = ["model", "name", "part"]
    a = got.layers.sort_values(key, kind="stable").reset_index(drop=True)
    b = fresh.sort_values(key, kind="stable").reset_index(drop=True)
    num = ["N", "M", "sv_max", "sv_min", "alpha", "rank_loss", "stable_rank", "log10_sv_min_rel"]
    pd.testing.assert_frame_equal(a[num].astype(float), b[num].astype(float), check_exact=True)
    assert list(a["status"]) == list(b["status"]) and list(a["collapsed"]) == list(b["collapsed"])


def test_cli_ray(ray_local, zoo, tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert cli.main(["scan", str(zoo["root"]), "--ray", "--quiet", "--max-retries", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "7 model(s)" in text and "error: broken" in text and EXAMPLE_COLLAPSED in text
    rs.scan(str(zoo["root"]), out=str(tmp_path / "one.json"), progress=False)
    assert_same_report(rs.scan.ScanReport.read(out), rs.scan.ScanReport.read(tmp_path / "one.json"))
    assert cli.main(["scan", str(zoo["root"]), "--ray", "--device", "cuda", "--quiet"]) == 2
    assert "the Ray cluster has none" in capsys.readouterr().err
