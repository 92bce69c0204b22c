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


# ---- scan: errors, summaries, outputs ---------------------------------------------------------------


def _model_file(tmp_path, tensors=None, name="m.safetensors") -> str:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    if tensors is None:
        tensors = {"a.weight": rng.standard_normal((16, 8)).astype(np.float32),
                   "b.weight": rng.standard_normal((12, 12)).astype(np.float32),
                   "bias": np.zeros(8, np.float32)}
    path = tmp_path / name
    save_file(tensors, str(path))
    return str(path)


def test_scan_out_into_missing_folder_is_a_clear_error(tmp_path, capsys):
    """An --out whose folder does not exist: the error line and exit 2, no traceback, nothing written."""
    model = _model_file(tmp_path)
    out = tmp_path / "missing" / "r.csv"
    assert cli.main(["scan", model, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rankscope scan: error: out: cannot write a report in ") and "missing" in err
    assert not (tmp_path / "missing").exists()


def test_scan_plots_onto_a_file_is_a_clear_error_before_scanning(tmp_path, capsys, monkeypatch):
    """--plots naming an existing file: refused (exit 2) before any model is scanned, the file intact."""
    model = _model_file(tmp_path)
    target = tmp_path / "figs"
    target.write_text("keep me")
    monkeypatch.setattr("rankscope.scan", lambda *a, **k: pytest.fail("scanned before checking --plots"))
    assert cli.main(["scan", model, "--quiet", "--plots", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rankscope scan: error: --plots: ") and str(target) in err
    assert target.read_text() == "keep me"


def test_summary_with_a_layer_of_nonfinite_weights(tmp_path, capsys):
    """A layer whose weights hold NaN (status failed, no rank) is listed with '-' for its rank: the
    summary raised IntCastingNaNError."""
    w = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    w[0, 0] = np.nan
    model = _model_file(tmp_path, {"nan.weight": w, "ok.weight": np.eye(8, dtype=np.float32)})
    assert cli.main(["scan", model, "--quiet"]) == 0
    out = capsys.readouterr().out
    (row,) = [line.split() for line in out.splitlines() if line.startswith("m ") and "nan.weight" in line]
    assert row[:5] == ["m", "nan.weight", "8x8", "-", "-"]
    (ok,) = [line.split() for line in out.splitlines() if "ok.weight" in line]
    assert ok[:5] == ["m", "ok.weight", "8x8", "8", "0"]


def test_summary_says_why_nothing_was_scanned(tmp_path, capsys):
    """Tensors skipped by --layers or --min-dim were counted as 'skipped (not matrices)', and a scan
    that scanned nothing gave no reason; now the count says 'skipped' and the reasons are listed."""
    model = _model_file(tmp_path)
    assert cli.main(["scan", model, "--quiet", "--min-dim", "100"]) == 1
    out = capsys.readouterr().out
    assert "0 layers scanned" in out and "3 tensors skipped." in out and "not matrices" not in out
    assert "skipped: m a.weight: M = 8 < min_dim = 100" in out
    assert "skipped: m bias: 1-D tensor (bias, norm or scalar)" in out
    assert cli.main(["scan", model, "--quiet", "--layers", "nomatch"]) == 1
    out = capsys.readouterr().out
    assert "1 tensors skipped." in out and "skipped: m: no tensor matches layers=['nomatch']" in out
    assert cli.main(["scan", model, "--quiet"]) == 0  # something scanned: no list of skipped tensors
    assert "skipped:" not in capsys.readouterr().out


def test_scan_help_matches_ray_gpu_default():
    """--gpus-per-task's help names the default of --device auto (1 on a cluster with GPUs)."""
    text = " ".join(cli._parser()._subparsers._group_actions[0].choices["scan"].format_help().split())
    assert "is auto and the cluster has GPUs" in text


@pytest.mark.parametrize("resume", [True, False])
def test_scan_out_onto_a_folder_is_refused_before_scanning(tmp_path, capsys, resume):
    """--out naming a folder: resumed, the error advised --no-resume (which then failed too, after
    the scan, on the rename of a temporary file); now both refuse it up front."""
    model = _model_file(tmp_path)
    folder = tmp_path / "r.csv"
    folder.mkdir()
    argv = ["scan", model, "--quiet", "--out", str(folder)] + ([] if resume else ["--no-resume"])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"rankscope scan: error: out: {str(folder)!r} is a folder, not a report file\n"
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "r.csv"]


def test_summary_shows_no_alpha_for_a_failed_fit(tmp_path, capsys):
    """A failed power-law fit has WeightWatcher's alpha = -1 in the report (kept there); the summary
    printed '-1.00' as if it were an exponent, now '-' (the models table and plots skip it too)."""
    model = _model_file(tmp_path, {"z.weight": np.zeros((8, 8), np.float32)})
    assert cli.main(["scan", model, "--quiet"]) == 0
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines() if "z.weight" in line]
    assert row == ["m", "z.weight", "8x8", "0", "8", "-", "-", "-", "RANK", "COLLAPSE"]
    assert rs.scan(model, progress=False).layers["alpha"].iloc[0] == -1


def test_output_into_a_closed_pipe_is_quiet():
    """`rankscope scan ... --json | head`: the reader closes the pipe; the command ends quietly with 0
    instead of a BrokenPipeError traceback (twice: the write, then Python's flush at exit)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "rankscope.cli", "scan", "--example", "--json", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the child writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
