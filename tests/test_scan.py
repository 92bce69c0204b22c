"""The model-zoo scanner: layer policy, batched spectra against numpy, the small end, the report,
zoo folders with bad files, resume, delta scans, plots and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import rankscope as rs
import torch
from conftest import EPS, engineered
from rankscope import cli
from rankscope.scan import layers as policy
from rankscope.scan.examples import EXAMPLE_COLLAPSED, example_model
from rankscope.scan.sources import TensorInfo
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch

EPS64 = float(np.finfo(np.float64).eps)


def _np_svd(w) -> np.ndarray:
    a = w.detach().to(torch.float64).numpy() if isinstance(w, torch.Tensor) else np.asarray(w, np.float64)
    return np.linalg.svd(a, compute_uv=False)


def _rows(report) -> dict:
    return {r["name"]: r for _, r in report.layers.iterrows()}


# ---- layer policy --------------------------------------------------------------------------------


def _info(name, shape, dtype="float32", module_type=None):
    return TensorInfo(name, tuple(shape), dtype, lambda: None, module_type)


def test_policy_kinds():
    plan = policy.plan([
        _info("embed.weight", (100, 8)), _info("fc.weight", (5, 7)), _info("fc.bias", (5,)),
        _info("conv.weight", (16, 8, 3, 3)), _info("c1.weight", (16, 8, 5)),
        _info("moe.experts.w1", (4, 32, 16)), _info("steps", (1,), "int64"), _info("mask", (4, 4), "bool"),
        _info("big", (2, 2, 2, 2, 2)),
    ])
    by = {layer.name: layer for layer in plan}
    assert by["embed.weight"].kind == "embedding" and (by["embed.weight"].N, by["embed.weight"].M) == (100, 8)
    assert by["fc.weight"].kind == "dense" and by["fc.weight"].matrix_shape == (5, 7)
    assert by["conv.weight"].kind == "conv2d" and by["conv.weight"].count == 9 and by["conv.weight"].rf == 9
    assert by["conv.weight"].num_evals == 8 * 9
    assert by["c1.weight"].kind == "conv1d" and by["c1.weight"].matrix_shape == (16, 40)
    assert [by[f"moe.experts.w1[{e}]"].kind for e in range(4)] == ["expert"] * 4
    assert "1-D" in by["fc.bias"].skip and "integer" in by["steps"].skip and "bool" in by["mask"].skip
    assert "5-D" in by["big"].skip


def test_policy_cut_views(rng):
    w = rng.standard_normal((6, 4, 3, 2)).astype(np.float32)
    (layer,) = policy.plan_tensor(_info("conv", w.shape))
    mats = layer.cut(w)
    assert len(mats) == 6 and all(np.shares_memory(m, w) for m in mats)
    np.testing.assert_array_equal(mats[4], w[:, :, 2, 0])
    (flat,) = policy.plan_tensor(_info("conv", w.shape), conv="flatten")
    np.testing.assert_array_equal(flat.cut(w)[0], w.reshape(6, 24))
    qkv = policy.plan_tensor(_info("attn.c_attn.weight", (8, 24)), split_qkv=True)
    x = rng.standard_normal((8, 24))
    assert [layer.name for layer in qkv] == [f"attn.c_attn.weight[{p}]" for p in "qkv"]
    np.testing.assert_array_equal(qkv[2].cut(x)[0], x[:, 16:])
    assert len(policy.plan_tensor(_info("attn.c_attn.weight", (8, 24)))) == 1


def test_policy_filters():
    infos = [_info(f"layers.{i}.{p}.weight", (16, 16 * (i + 1))) for i in range(3) for p in ("q", "mlp")]
    names = lambda **kw: [layer.name for layer in policy.plan(infos, **kw) if layer.skip is None]
    assert names(layers=r"\.q\.") == ["layers.0.q.weight", "layers.1.q.weight", "layers.2.q.weight"]
    assert names(layers="*.mlp.*") == ["layers.0.mlp.weight", "layers.1.mlp.weight", "layers.2.mlp.weight"]
    assert names(layers=["layers.0.*", r"2\.q"]) == ["layers.0.q.weight", "layers.0.mlp.weight",
                                                     "layers.2.q.weight"]
    kept = policy.plan(infos, max_dim=32)
    assert [layer.name for layer in kept if layer.skip is None] == ["layers.0.q.weight", "layers.0.mlp.weight",
                                                                     "layers.1.q.weight", "layers.1.mlp.weight"]
    assert all("max_dim" in layer.skip for layer in kept if layer.skip)
    with pytest.raises(TypeError, match="layers"):
        policy.name_filter(3)


# ---- spectra and metrics against numpy -------------------------------------------------------------


def _mixed_model(rng) -> dict:
    return {
        "a.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "b.weight": rng.standard_normal((48, 64)).astype(np.float32),
        "c.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
        "d64.weight": rng.standard_normal((33, 97)),
        "b.bias": np.zeros(48, np.float32),
    }


def test_scan_matches_numpy(rng):
    sd = _mixed_model(rng)
    rep = rs.scan(sd, progress=False, device="cpu")
    rows = _rows(rep)
    assert rows["b.bias"]["status"] == "skipped"
    for name in ("a.weight", "b.weight", "c.weight", "d64.weight"):
        w, r = sd[name], rows[name]
        s = _np_svd(w)
        assert r["status"] in ("success", "failed") and r["dtype"] == w.dtype.name
        assert (r["N"], r["M"], r["num_evals"]) == (max(w.shape), min(w.shape), min(w.shape))
        assert r["sv_max"] == pytest.approx(s[0], rel=1e-12)
        assert r["sv_min"] == pytest.approx(s[-1], rel=1e-6)
        assert r["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-10)
        p = s / s.sum()
        assert r["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
        assert r["log_norm"] == pytest.approx(np.log10((s**2).sum()), rel=1e-10)
        assert r["log_spectral_norm"] == pytest.approx(np.log10(s[0] ** 2), abs=1e-10)
        assert r["matrix_rank"] == np.linalg.matrix_rank(np.asarray(w, np.float64) if w.dtype == np.float64 else w)
        assert r["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-6)
    conv = sd["conv.weight"]
    slices = [_np_svd(conv[:, :, i, j]) for i in range(3) for j in range(3)]
    r = rows["conv.weight"]
    assert r["num_evals"] == 8 * 9 and r["rf"] == 9 and (r["N"], r["M"]) == (16, 8)
    assert r["sv_max"] == pytest.approx(max(s[0] for s in slices), rel=1e-12)  # stored slices, unscaled
    assert r["sv_min"] == pytest.approx(min(s[-1] for s in slices), rel=1e-6)
    pooled = np.sort(np.concatenate(slices) ** 2) * 0.5  # WeightWatcher's conv2d_norm
    np.testing.assert_allclose(np.sort(rep.evals[("model", "conv.weight")]), pooled, rtol=1e-10)
    assert r["log_norm"] == pytest.approx(np.log10(pooled.sum()), rel=1e-12)


def test_sources_agree(tmp_path, rng):
    """nn.Module, its state_dict, a safetensors file and a .pt file give the same rows."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(), torch.nn.Conv2d(3, 12, 3),
                                torch.nn.Linear(30, 10))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_torch(sd, tmp_path / "m.safetensors")
    torch.save({"state_dict": sd}, tmp_path / "m.pt")
    cols = ["name", "N", "M", "num_evals", "sv_max", "sv_min", "matrix_rank", "alpha", "xmin", "D", "stable_rank",
            "entropy", "status"]
    frames = [rs.scan(src, progress=False).layers[cols].sort_values("name").reset_index(drop=True)
              for src in (model, sd, str(tmp_path / "m.safetensors"), str(tmp_path / "m.pt"))]
    for f in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], f, check_exact=False, rtol=1e-12)


# ---- the small end ----------------------------------------------------------------------------------


def _graded(rng, m, n, lowest_log2: int, dtype: str, increasing: bool = False):
    """A matrix whose columns are scaled by powers of two from 1 down to 2**lowest_log2: every entry is
    exactly representable in `dtype` (a power-of-two scale is exact), so the stored matrix has
    singular values down to ~2**lowest_log2 · s₁ whatever the dtype's precision."""
    a = torch.from_numpy(rng.standard_normal((m, n))).to(getattr(torch, dtype))
    # permuted: with the scales in decreasing order the Gram route would keep relative accuracy
    # (a graded Gram matrix), and the test could not tell the refinement from its absence
    # (increasing=True, smallest column first, defeats it every time).
    scales = 2.0 ** np.round(np.linspace(0, lowest_log2, n))
    scales = scales[::-1].copy() if increasing else rng.permutation(scales)
    return a * torch.from_numpy(scales).to(a.dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lowest", [-22, -27, -33, -40])  # s_min/s1 ≈ 1.5e-7 … 1e-12: all below refine_rtol
def test_small_end_of_stored_weights(rng, dtype, lowest):
    m, n = 96, 40
    sd = {"w": _graded(rng, m, n, lowest, dtype), "u": _graded(rng, n + 7, n, lowest, dtype).T.contiguous()}
    rep = rs.scan(sd, progress=False, device="cpu")
    rows = _rows(rep)
    for name, w in sd.items():
        s = _np_svd(w)
        r = rows[name]
        # float64 SVDs on both sides: |δσ| ≲ c·max(m, n)·eps64·s₁ (c = 2, as conftest.sv_tolerance)
        tol = 2 * max(w.shape) * EPS64 * s[0]
        assert abs(r["sv_min"] - s[-1]) <= tol, (name, r["sv_min"], s[-1])
        assert r["log10_sv_min"] == pytest.approx(np.log10(s[-1]), abs=tol / s[-1] / np.log(10) + 1e-12)
        assert r["condition_number"] == pytest.approx(s[0] / s[-1], rel=tol / s[-1] + 1e-12)
        if s[-1] < 1e-6 * s[0]:
            assert r["refined"]
        rank = int(np.sum(s > s[0] * (EPS[dtype] if dtype == "bfloat16" else max(w.shape) * EPS[dtype])))
        assert r["matrix_rank"] == rank and r["rank_loss"] == min(w.shape) - rank


def test_refinement_is_what_makes_it_right(rng):
    """The float64 Gram route alone puts log10(s_min/s₁) ≈ −10.8 at −inf or near −8 (METRICS.md §0):
    the scan's small end is right only because such matrices are recomputed by the exact route."""
    w = _graded(rng, 80, 32, -36, "float32", increasing=True)
    s = _np_svd(w)
    gram = rs.svdvals(w, method="gram", dtype="float64").numpy()
    with np.errstate(divide="ignore"):
        assert not abs(np.log10(gram[-1]) - np.log10(s[-1])) < 0.5
    good = _rows(rs.scan({"w": w}, progress=False))["w"]
    assert good["refined"]
    assert good["log10_sv_min"] == pytest.approx(np.log10(s[-1]), abs=1e-6)


def test_flags(rng):
    good = engineered(rng, 64, 32, np.linspace(1, 0.5, 32)).astype(np.float32)
    tiny = engineered(rng, 64, 32, np.r_[np.linspace(1, 0.5, 31), 1e-9]).astype(np.float64)
    dead = good.copy()
    dead[:, 20:] = 0
    rows = _rows(rs.scan({"good": good, "tiny": tiny, "dead": dead}, progress=False))
    assert not rows["good"]["collapsed"] and not rows["good"]["rank_collapsed"]
    assert rows["tiny"]["sv_collapsed"] and not rows["tiny"]["rank_collapsed"] and rows["tiny"]["collapsed"]
    assert rows["dead"]["rank_collapsed"] and rows["dead"]["rank_loss"] == 12 and rows["dead"]["collapsed"]
    assert rows["dead"]["log10_sv_min"] < -20 or rows["dead"]["log10_sv_min"] == -np.inf
    r2 = _rows(rs.scan({"tiny": tiny}, progress=False, collapse_log10=-10))
    assert not r2["tiny"]["sv_collapsed"]
    one = good.copy()
    one[:, 0] = 0  # rank loss 1 of 32: 3 %, below the default 5 %, above 0
    assert not _rows(rs.scan({"one": one}, progress=False))["one"]["rank_collapsed"]
    assert _rows(rs.scan({"one": one}, progress=False, collapse_rank_frac=0))["one"]["rank_collapsed"]


def test_random_square_bfloat16_is_not_collapsed(rng):
    """~1 % of a random square bfloat16 matrix's singular values lie below bfloat16's eps·s₁: rank loss, not collapse."""
    n = 1024  # ~10 values below the cut (eigenvalue counts of random matrices barely fluctuate)
    w = torch.from_numpy(rng.standard_normal((n, n))).bfloat16()
    r = _rows(rs.scan({"w": w}, progress=False))["w"]
    assert 0 < r["rank_loss"] < 0.03 * n
    assert not r["rank_collapsed"] and not r["collapsed"]


def test_experts_and_conv1d(rng):
    experts = rng.standard_normal((3, 20, 12)).astype(np.float32)
    experts[1, :, 6:] = 0
    conv1d = torch.nn.Conv1d(6, 10, 3)
    rep = rs.scan({"moe.experts.w": experts, "c.weight": conv1d.weight.detach()}, progress=False)
    rows = _rows(rep)
    for e in range(3):
        r = rows[f"moe.experts.w[{e}]"]
        assert r["type"] == "expert" and r["part"] == e and r["tensor"] == "moe.experts.w"
        assert r["sv_max"] == pytest.approx(_np_svd(experts[e])[0], rel=1e-12)
    assert rows["moe.experts.w[1]"]["rank_loss"] == 6 and rows["moe.experts.w[0]"]["rank_loss"] == 0
    c = rows["c.weight"]
    assert c["type"] == "conv1d" and (c["N"], c["M"]) == (18, 10)
    assert c["sv_max"] == pytest.approx(_np_svd(conv1d.weight.detach().reshape(10, 18))[0], rel=1e-6)


def test_nonfinite_tensor_is_reported(rng):
    w = rng.standard_normal((20, 10)).astype(np.float32)
    w[3, 4] = np.nan
    rows = _rows(rs.scan({"bad": w, "ok": rng.standard_normal((20, 10))}, progress=False))
    assert rows["bad"]["status"] == "failed" and "non-finite" in rows["bad"]["warning"]
    assert rows["ok"]["status"] == "success"



def test_report_read_while_a_scan_rewrites_it(tmp_path):
    """Reading a Parquet report while a scan replaces it (its atomic rewrite after every window) sees
    one whole file or the other: pyarrow given the path opened it more than once, and read one
    file's footer with the next one's pages (~20 errors a second here)."""
    pytest.importorskip("pyarrow")
    from rankscope.scan.report import ScanReport, layer_frame

    path = tmp_path / "report.parquet"
    reps = [ScanReport(layer_frame([{"model": f"m{i}", "name": f"l{j}", "tensor": "t", "status": "success",
                                     "sv_max": float(j)} for j in range(n)])) for i, n in enumerate((3, 300, 30, 3000))]
    reps[0].save(path)
    stop, errors, lengths = threading.Event(), [], set()

    def writer():
        i = 0
        while not stop.is_set():
            reps[i % len(reps)].save(path)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                lengths.add(len(ScanReport.read(path).layers))
            except Exception as e:  # noqa: BLE001 - collected, asserted below
                errors.append(repr(e))
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert lengths <= {3, 300, 30, 3000} and len(lengths) > 1


def test_unusable_report_path_fails_before_scanning(tmp_path):
    """A corrupt report at out= (resume on) names the file and the way out; a folder the report cannot
    be written to is refused before any model is scanned."""
    for name, text in (("bad.csv", '\x00garbage"\n"a,b'), ("bad.json", "{not json")):
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(ValueError, match=r"cannot resume from the report at .*no-resume"):
            rs.scan({"w": np.eye(4)}, progress=False, out=p)
        assert list(rs.scan({"w": np.eye(4)}, progress=False, out=p, resume=False).layers["status"]) == ["success"]
    with pytest.raises(FileNotFoundError, match="cannot write a report"):
        rs.scan({"w": np.eye(4)}, progress=False, out=tmp_path / "missing" / "r.csv")
    assert not list((tmp_path).glob(".rankscope-probe-*"))


def test_model_with_nothing_to_scan_keeps_its_row(rng):
    """A model holding no tensors is an error row in its place; one whose tensors the layers= filter
    all drops is a skipped row saying so; neither disappears from the report."""
    rep = rs.scan([{"w": rng.standard_normal((6, 4))}, {}, torch.nn.ReLU()], progress=False)
    assert list(rep.layers["model"]) == ["model_0", "model_1", "model_2"]
    assert list(rep.layers["status"]) == ["success", "error", "error"]
    assert (rep.layers["warning"].iloc[1:] == "the model holds no tensors").all()
    assert len(rep.models) == 3 and len(rep.errors) == 2
    filtered = rs.scan({"w": np.eye(4)}, progress=False, layers="nomatch").layers
    assert list(filtered["status"]) == ["skipped"] and "nomatch" in filtered["warning"].iloc[0]


def test_tensor_the_engine_refuses_stays_its_own_error(rng):
    """A tensor the engine cannot read (sparse, meta) fails alone, not the chunk it shares with good
    tensors of other models; torch float8 weights are widened and scanned; torch's quantised
    integers and numpy's longdouble are skipped with their dtype as the reason."""
    good = {"w": rng.standard_normal((8, 8))}
    ref = rs.scan([good], progress=False).layers.iloc[0]
    f8 = torch.from_numpy(rng.standard_normal((6, 5)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates its quantised tensors
        q = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)
    cases = {"sparse": ({"sp": torch.randn(4, 4).to_sparse()}, "error"),
             "meta": ({"me": torch.empty(4, 4, device="meta")}, "error"),
             "float8": ({"f8": f8.to(torch.float8_e4m3fn)}, "success"),
             "qint8": ({"q": q}, "skipped"),
             "longdouble": ({"ld": rng.standard_normal((4, 4)).astype(np.longdouble)}, "skipped")}
    for case, (bad, status) in cases.items():
        rep = rs.scan([good, bad], progress=False)
        rows = rep.layers
        assert list(rows["status"]) == ["success", status], case
        assert rows.iloc[0]["sv_max"] == ref["sv_max"] and rows.iloc[0]["alpha"] == ref["alpha"], case
        if status == "skipped":
            assert str(bad[next(iter(bad))].dtype).removeprefix("torch.") in rows.iloc[1]["warning"], case
        if case == "float8":
            s = np.linalg.svd(f8.to(torch.float8_e4m3fn).float().numpy().astype(np.float64), compute_uv=False)
            assert rows.iloc[1]["sv_max"] == pytest.approx(s[0], rel=1e-6)

# ---- zoo, errors, resume, files ---------------------------------------------------------------------


def _zoo(tmp_path, rng) -> list[str]:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(3):
        save_file({f"l{j}.weight": rng.standard_normal((32, 24)).astype(np.float32) for j in range(3)},
                  str(zoo / f"m{i}.safetensors"))
    (zoo / "broken.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    return sorted(str(p) for p in zoo.iterdir())


def test_zoo_with_broken_file(tmp_path, rng):
    _zoo(tmp_path, rng)
    rep = rs.scan(str(tmp_path / "zoo"), progress=False)
    assert len(rep.scanned) == 9
    assert len(rep.errors) == 1 and "broken" in rep.errors["path"].iloc[0]
    models = rep.models
    (bad,) = models.loc[models["num_errors"] > 0, "model"]
    assert len(models) == 4 and "broken" in bad
    assert (models.loc[models["num_errors"] == 0, "num_layers"] == 3).all()


@pytest.mark.parametrize("ext", [".csv", ".json", ".parquet"])
def test_report_files_round_trip(tmp_path, rng, ext):
    rep = rs.scan(_mixed_model(rng), progress=False)
    path = tmp_path / f"r{ext}"
    rep.save(path)
    back = rs.scan.ScanReport.read(path).layers
    num = ["N", "M", "sv_max", "sv_min", "alpha", "rank_loss", "stable_rank"]
    pd.testing.assert_frame_equal(back[num].astype(float), rep.layers[num].astype(float), rtol=1e-12)
    assert list(back["name"]) == list(rep.layers["name"]) and list(back["status"]) == list(rep.layers["status"])
    assert list(back["collapsed"]) == list(rep.layers["collapsed"])
    if ext == ".json":
        json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_resume_skips_finished_files(tmp_path, rng, monkeypatch):
    files = _zoo(tmp_path, rng)
    out = tmp_path / "report.csv"
    first = rs.scan(str(tmp_path / "zoo"), out=str(out), progress=False)
    assert out.exists() and len(first.scanned) == 9
    opened = []
    from rankscope.scan import sources

    real = sources.open_sources

    def spy(*a, **k):
        for s in real(*a, **k):
            opened.append(s.name)
            yield s

    monkeypatch.setattr("rankscope.scan.open_sources", spy)
    # touch one model: a new mtime (and size) means it is scanned again
    save_file({"l0.weight": rng.standard_normal((32, 24)).astype(np.float32)}, files[1])
    second = rs.scan(str(tmp_path / "zoo"), out=str(out), progress=False)
    layers = second.layers
    assert len(second.scanned) == 3 + 3 + 1  # m0, m2 kept, m1 rescanned with its one tensor
    assert not layers.duplicated(["model", "name"]).any()
    assert layers.loc[layers["status"] != "error", "model"].nunique() == 3
    assert len(second.errors) == 1  # the broken file is tried again, and reported once
    # the file written equals what was returned
    assert len(rs.scan.ScanReport.read(out).scanned) == 7


def test_resume_says_what_it_kept(tmp_path, rng, capsys):
    """A resumed scan reports the models it skipped as unchanged and the models the report holds that
    this scan did not list (kept, which can surprise: a stale report brings old models back); the CLI
    prints both, with the way out."""
    files = _zoo(tmp_path, rng)
    out = tmp_path / "report.csv"
    other = tmp_path / "other.safetensors"
    save_file({"w": rng.standard_normal((16, 8)).astype(np.float32)}, str(other))
    rs.scan([str(tmp_path / "zoo"), str(other)], out=str(out), progress=False)
    fresh = rs.scan(str(tmp_path / "zoo"), out=str(tmp_path / "new.csv"), progress=False)
    assert fresh.resumed == {}
    save_file({"l0.weight": rng.standard_normal((32, 24)).astype(np.float32)}, files[1])  # m0 changed
    again = rs.scan(str(tmp_path / "zoo"), out=str(out), progress=False)
    assert again.resumed == {"from": str(out), "unchanged": ["m1", "m2"], "not_listed": ["other"]}
    assert "other" in set(again.layers["model"])
    assert cli.main(["scan", str(tmp_path / "zoo"), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"Resumed from {out}: 3 model(s) unchanged since it was written, not rescanned (m0, m1, m2)" in text
    assert "did not list them: 1 model(s) (other) (--no-resume starts a fresh report)" in text
    assert cli.main(["scan", str(tmp_path / "zoo"), "--out", str(out), "--quiet", "--no-resume"]) == 0
    assert "Resumed" not in capsys.readouterr().out


def test_interrupted_scan_keeps_finished_windows(tmp_path, rng, monkeypatch):
    """A single-machine scan stopped half-way: the report at `out` holds the windows that finished,
    and resuming from it scans only the other models, to the rows of a whole scan."""
    files = _zoo(tmp_path, rng)  # broken, m0, m1, m2: an error row, then one model per window
    out = tmp_path / "report.json"
    from rankscope.scan import sources

    real = sources.open_sources

    class Stop(Exception):
        pass

    def stop_at_m2(*a, **k):
        for s in real(*a, **k):
            if s.name == "m2":  # m1 is listed: m0's window has run, m1's has not
                raise Stop
            yield s

    monkeypatch.setattr("rankscope.scan.open_sources", stop_at_m2)
    with pytest.raises(Stop):
        rs.scan(str(tmp_path / "zoo"), out=str(out), window_mb=1e-3, progress=False)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".report.json.tmp")]
    partial = rs.scan.ScanReport.read(out).layers
    assert set(partial["model"]) == {"broken", "m0"} and (partial["status"] != "error").sum() == 3
    monkeypatch.setattr("rankscope.scan.open_sources", real)
    got = rs.scan(str(tmp_path / "zoo"), out=str(out), window_mb=1e-3, progress=False)
    assert {m for m, _ in got.evals} == {"m1", "m2"}  # m0 kept from the file; broken tried again
    assert list(got.layers["model"].unique()) == ["m0", "broken", "m1", "m2"]  # kept rows first
    key = ["model", "name"]
    a = got.layers.sort_values(key).reset_index(drop=True)
    b = rs.scan(files, progress=False).layers.sort_values(key).reset_index(drop=True)
    num = ["N", "M", "sv_max", "sv_min", "alpha", "rank_loss", "stable_rank"]
    pd.testing.assert_frame_equal(a[num].astype(float), b[num].astype(float), rtol=1e-12)
    assert a[key].equals(b[key]) and list(a["status"]) == list(b["status"])


def test_report_formats_by_suffix(tmp_path, rng):
    """save(), read() and scan(out=) take the same suffixes, case-insensitively, and refuse others alike."""
    pytest.importorskip("pyarrow")
    rep = rs.scan(_mixed_model(rng), progress=False)
    for name in ("r.pq", "R.CSV", "r.Json"):
        rep.save(tmp_path / name)
        assert list(rs.scan.ScanReport.read(tmp_path / name).layers["name"]) == list(rep.layers["name"])
    rs.scan(_mixed_model(rng), out=str(tmp_path / "out.PQ"), progress=False)
    assert len(rs.scan.ScanReport.read(tmp_path / "out.PQ").scanned) == len(rep.scanned)
    msg = "cannot tell the report format from '.*r.xlsx': use .csv, .parquet or .json"
    with pytest.raises(ValueError, match="^" + msg):
        rep.save(tmp_path / "r.xlsx")
    with pytest.raises(ValueError, match="^" + msg):
        rs.scan.ScanReport.read(tmp_path / "r.xlsx")
    with pytest.raises(ValueError, match="^out: " + msg):
        rs.scan({"w": np.eye(3)}, out=tmp_path / "r.xlsx")
    assert not (tmp_path / "r.xlsx").exists()


def test_delta_scan(tmp_path, rng):
    base = {"a": rng.standard_normal((30, 20)).astype(np.float32), "b": rng.standard_normal((20, 20)).astype(np.float32),
            "only_base": rng.standard_normal((5, 5)).astype(np.float32)}
    low = (rng.standard_normal((30, 2)) @ rng.standard_normal((2, 20))).astype(np.float32)
    tuned = {"a": base["a"] + low, "b": base["b"], "new": rng.standard_normal((8, 6)).astype(np.float32)}
    save_file(base, str(tmp_path / "base.safetensors"))
    rows = _rows(rs.scan(tuned, base=str(tmp_path / "base.safetensors"), progress=False))
    d = tuned["a"].astype(np.float64) - base["a"].astype(np.float64)
    s = _np_svd(d)
    assert rows["a"]["sv_max"] == pytest.approx(s[0], rel=1e-6)
    assert rows["a"]["rank_loss"] == 18  # a rank-2 update
    assert rows["b"]["sv_max"] == 0 and rows["b"]["matrix_rank"] == 0
    assert rows["new"]["status"] == "skipped" and "base" in rows["new"]["warning"]


def test_scan_gguf_npz_onnx_files(tmp_path, rng):
    """Each file kind through the whole scan: rows equal numpy's float64 SVD of what the file stores."""
    gguf = pytest.importorskip("gguf")
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    a = rng.standard_normal((48, 64)).astype(np.float32)
    q = rng.standard_normal((32, 96)).astype(np.float32)
    qq = gguf.quants.quantize(q, gguf.GGMLQuantizationType.Q8_0)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("blk.0.attn_q.weight", a)
    w.add_tensor("blk.0.ffn_up.weight", qq, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.savez(tmp_path / "m.npz", **{"fc.weight": a, "fc.bias": a[0]})
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 48])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(a, "W")])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    rep = rs.scan(str(tmp_path), progress=False)
    by = {(r["model"], r["name"]): r for _, r in rep.layers.iterrows()}
    deq = gguf.quants.dequantize(qq, gguf.GGMLQuantizationType.Q8_0)
    for key, mat in ((("m", "blk.0.attn_q.weight"), a), (("m", "blk.0.ffn_up.weight"), deq),
                     (("m", "fc.weight"), a), (("m", "W"), a)):
        hits = [r for k, r in by.items() if k[1] == key[1]]
        assert hits, key
        s = _np_svd(mat)
        for r in hits:
            assert r["sv_max"] == pytest.approx(s[0], rel=1e-6) and r["sv_min"] == pytest.approx(s[-1], rel=1e-5)
    assert by[next(k for k in by if k[1] == "blk.0.ffn_up.weight")]["dtype"] == "Q8_0"
    assert len(rep.errors) == 0 and rep.layers["model"].nunique() == 3


def test_scan_does_not_modify_or_copy_inputs(rng):
    w = rng.standard_normal((50, 30)).astype(np.float32)
    before = w.copy()
    rs.scan({"w": w}, progress=False)
    np.testing.assert_array_equal(w, before)


def test_bad_arguments():
    with pytest.raises(ValueError, match="conv"):
        rs.scan({"w": np.eye(3)}, conv="fft")
    with pytest.raises(ValueError, match="rank_policy"):
        rs.scan({"w": np.eye(3)}, rank_policy="nope")
    with pytest.raises(ValueError, match="estimator"):
        rs.scan({"w": np.eye(3)}, estimator="mle")
    with pytest.raises(TypeError):
        rs.scan(42)
    with pytest.raises(ValueError, match="report format"):
        rs.scan({"w": np.eye(3)}, out="report.xlsx")
    for kw, match in (({"chunk_mb": float("inf")}, "chunk_mb"), ({"window_mb": 0}, "window_mb"),
                      ({"collapse_log10": float("nan")}, "collapse_log10"), ({"collapse_log10": "x"}, "collapse_log10"),
                      ({"xmin_max": -1.0}, "xmin_max"), ({"xmin_max": float("nan")}, "xmin_max")):
        with pytest.raises(ValueError, match=match):
            rs.scan({"w": np.eye(3)}, progress=False, **kw)
    ok = rs.scan({"w": np.eye(3)}, progress=False, collapse_log10=np.float64(-6), xmin_max=np.float32(3))
    assert list(ok.layers["status"]) == ["success"]
    # min_dim/max_dim: numpy integers as ints (they were refused), bools and negatives refused
    sized = rs.scan({"w": np.eye(3), "v": np.eye(5)}, progress=False, min_dim=np.int64(4), max_dim=np.int32(8))
    assert dict(zip(sized.layers["name"], sized.layers["status"])) == {"w": "skipped", "v": "success"}
    for v in (True, -1, 2.0):
        with pytest.raises(ValueError, match="min_dim"):
            rs.scan({"w": np.eye(3)}, progress=False, min_dim=v)
    with pytest.raises(SystemExit):
        cli.main(["scan", "--example", "--top", "0"])


def test_api_does_not_import_scanner():
    code = ("import sys, numpy as np, rankscope as rs; rs.svdvals(np.eye(3)); rs.spectrum_report(np.eye(3)); "
            "bad = [m for m in ('rankscope.scan', 'pandas', 'safetensors', 'tqdm', 'torch') if m in sys.modules]; "
            "assert not bad, bad; rs.scan({'w': np.eye(4)}, progress=False); assert 'rankscope.scan' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- plots ------------------------------------------------------------------------------------------


def test_plots(tmp_path, rng):
    pytest.importorskip("matplotlib")
    from rankscope.scan import plots

    rep = rs.scan(_mixed_model(rng), progress=False)
    written = plots.write_all(rep, tmp_path / "figs")
    names = {os.path.basename(p) for p in written}
    assert "sv_min_hist.png" in names and "depth_model.png" in names
    assert {f"esd_model__{n}.png" for n in ("a.weight", "conv.weight", "d64.weight")} <= names
    for p in written:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(p) > 5000
    with pytest.raises(KeyError, match="no layer|eigenvalues"):
        plots.plot_esd(rep, "model", "nope")


# ---- CLI --------------------------------------------------------------------------------------------


def test_cli_example(capsys):
    assert cli.main(["scan", "--example", "--quiet"]) == 0
    out = capsys.readouterr().out
    flagged = [line.split()[1] for line in out.splitlines() if "RANK COLLAPSE" in line]
    assert flagged == [EXAMPLE_COLLAPSED]
    n = sum(1 for w in example_model().values() if w.ndim == 2)
    assert f"{n} layers scanned" in out and "1 flagged" in out


def test_cli_json_and_out(tmp_path, capsys):
    out = tmp_path / "r.parquet"
    assert cli.main(["scan", "--example", "--json", "--quiet", "--out", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    by = {r["name"]: r for r in rows}
    assert by[EXAMPLE_COLLAPSED]["rank_loss"] == 58 and by[EXAMPLE_COLLAPSED]["collapsed"]
    assert [r["name"] for r in rows if r["collapsed"]] == [EXAMPLE_COLLAPSED]
    assert by["blocks.0.norm.weight"]["status"] == "skipped"
    assert out.exists()


def test_cli_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["scan"])
    assert e.value.code == 2
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    assert cli.main(["scan", str(tmp_path / "bad.safetensors"), "--quiet"]) == 1
    assert "error" in capsys.readouterr().out


# ---- GPU (run by `pytest -m cuda` on a lent GPU; skipped elsewhere) ---------------------------------


def _gpu() -> bool:
    from rankscope._backend import cuda_available

    return bool(cuda_available() and torch.cuda.is_available())


@pytest.mark.cuda
@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU with rankscope's CUDA backend")
def test_scan_on_gpu_equals_cpu(tmp_path, rng):
    """Host files streamed through the GPU, and a model on the GPU, give the CPU's rows."""
    sd = _mixed_model(rng)
    sd["graded"] = _graded(rng, 70, 30, -36, "float32", increasing=True).numpy()
    sd["bf16"] = _graded(rng, 64, 48, -30, "bfloat16")
    save_torch({k: torch.as_tensor(v) for k, v in sd.items()}, tmp_path / "m.safetensors")
    cols = ["name", "sv_max", "sv_min", "matrix_rank", "rank_loss", "alpha", "stable_rank", "refined"]
    cpu = rs.scan(str(tmp_path / "m.safetensors"), device="cpu", progress=False).scanned[cols]
    gpu = rs.scan(str(tmp_path / "m.safetensors"), device="cuda", progress=False).scanned[cols]
    pd.testing.assert_frame_equal(cpu.reset_index(drop=True), gpu.reset_index(drop=True), rtol=1e-6)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Conv2d(3, 16, 3)).cuda()
    a = rs.scan(model, progress=False).scanned[cols]
    b = rs.scan(model.cpu(), device="cpu", progress=False).scanned[cols]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), rtol=1e-6)
