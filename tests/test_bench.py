"""`rankscope bench` (rankscope.bench.run / format_table and the CLI subcommand)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rankscope import bench, cli
from rankscope._backend import cuda_available

TINY = {"16x3x3": (16, 3, 3), "4x20x8": (4, 20, 8), "mixed": [(8, 8), (12, 5), (5, 12), (30, 3)]}
SV_KEYS = set(bench.KEYS) | {"err_rankscope", "err_numpy"}
TORCH_KEYS = {"torch_ms", "vs_torch", "err_torch"}
RANK_KEYS = set(bench.KEYS) | {"ranks_agree", "rank_mismatches"}


def _strict_json(text: str):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def _check_rows(rows, cases, torch: bool):
    assert [(r["case"], r["op"]) for r in rows] == [(c, op) for c in cases for op in ("svdvals", "matrix_rank")]
    for r in rows:
        if r["op"] == "svdvals":
            assert set(r) == SV_KEYS | (TORCH_KEYS if torch else set())
            errs = [r["err_rankscope"], r["err_numpy"]] + ([r["err_torch"]] if torch else [])
            assert all(0 <= e < 1e-5 for e in errs), r
        else:
            assert set(r) == RANK_KEYS
            assert r["ranks_agree"] is True and r["rank_mismatches"] == 0, r
        assert r["rankscope_ms"] > 0 and r["numpy_ms"] > 0 and r["vs_numpy"] > 0
        assert not torch or r["op"] != "svdvals" or (r["torch_ms"] > 0 and r["vs_torch"] > 0)
        assert r["device"] == "cpu" and r["runs"] >= 1


def test_run_tiny_cases(rng):
    rows = bench.run(quick=True, cases=TINY, runs=2, seed=int(rng.integers(2**31)))
    _check_rows(rows, TINY, torch=True)
    assert [r["matrices"] for r in rows[::2]] == [16, 4, 4]
    json.dumps(rows, allow_nan=False)
    table = bench.format_table(rows)
    assert "torch" in table.splitlines()[2] and "ranks equal numpy's" in table
    assert all(c in table for c in TINY)


def test_without_torch(monkeypatch):
    monkeypatch.setattr(bench, "_torch", lambda: None)
    rows = bench.run(cases={"8x4x4": (8, 4, 4)}, runs=1)
    _check_rows(rows, ["8x4x4"], torch=False)
    table = bench.format_table(rows)
    assert "torch not installed" in table and "vs torch" not in table


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        bench.run(device="tpu", cases=TINY)


def test_cli_quick_json(capsys):
    assert cli.main(["bench", "--quick", "--json"]) == 0
    rows = _strict_json(capsys.readouterr().out)
    _check_rows(rows, bench.QUICK_CASES, torch=True)


def test_cli_table(capsys, monkeypatch):
    monkeypatch.setattr(bench, "QUICK_CASES", TINY)
    assert cli.main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "median of 3 runs" in out and "mixed" in out


@pytest.mark.skipif(cuda_available(), reason="needs a machine without a usable GPU")
def test_cli_cuda_without_gpu(capsys):
    assert cli.main(["bench", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "rankscope bench: error" in err and "no usable GPU" in err


def test_import_rankscope_does_not_import_bench():
    code = "import sys, rankscope; assert 'rankscope.bench' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
