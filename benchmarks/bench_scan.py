"""rankscope.scan against WeightWatcher's analyze() on the same nn.Module, in one process, and the
synthetic-LLM scan from disk.

    python benchmarks/bench_scan.py [--cases resnet18,resnet50,bert,resnet18-mp,llm] [--llm tinyllama-1.1b]
                                    [--out benchmarks/results/scan-<machine>-<date>.json]

Each model case times `rankscope.scan(model)` (median of --repeat runs after one warm-up) and
`WeightWatcher(model).analyze(...)` (one run: it takes seconds to minutes), reports the ratio, and
the float64 flop count of rankscope's route (Gram of the smaller side + tridiagonal reduction, the
floor on this machine at the measured dgemm rate). The "llm" case writes a bfloat16 checkpoint with
benchmarks/make_synthetic_llm.py, scans it from disk, and reports time, matrices/s, peak extra
anonymous memory (sampled every 20 ms; the file's page cache is not counted) and the flagged layers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def _machine() -> str:
    cpu = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def write_results(results: dict, kind: str, out: str | None = None) -> str:
    """Writes `results` as JSON to `out`, default benchmarks/results/<kind>-<host>-<date>.json; returns the path."""
    out = out or os.path.join(os.path.dirname(__file__), "results",
                              f"{kind}-{platform.node() or 'host'}-{results['date']}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"written {out}")
    return out


def _flops(report) -> float:
    """float64 flops of the Gram route for every scanned matrix: m·n·k (SYRK, k = min side) + 4/3 k³."""
    total = 0.0
    for _, r in report.scanned.iterrows():
        n, m = float(r["N"]), float(r["M"])
        count = float(r["num_evals"]) / m if m else 0
        total += count * (n * m * m + 4.0 / 3.0 * m**3)
    return total


def _dgemm_rate() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048))
    a @ a
    t = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 2048**3 / (time.perf_counter() - t)


class _PeakAnon:
    """Peak RssAnon of this process (kB → bytes) above the level at start, sampled in a thread."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    @staticmethod
    def _anon() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.base = self._anon()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._anon() - self.base)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._anon() - self.base)


def _time(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def model_case(name: str, model, repeat: int, ww_kwargs: dict, rs_kwargs: dict) -> dict:
    import rankscope as rs
    import weightwatcher as ww

    t_rs, rep = _time(lambda: rs.scan(model, progress=False, **rs_kwargs), repeat)
    t = time.perf_counter()
    details = ww.WeightWatcher(model=model).analyze(**ww_kwargs)
    t_ww = time.perf_counter() - t
    flops = _flops(rep)
    s = rep.scanned
    names = set(details["longname"] if "longname" in details else details["name"])
    common = s[s["tensor"].str.removesuffix(".weight").isin(names)]
    return {"case": name, "layers_rankscope": len(s), "layers_ww": len(details), "matrices":
            int(sum(float(r["num_evals"]) / float(r["M"]) for _, r in s.iterrows())),
            "rankscope_s": t_rs, "weightwatcher_s": t_ww, "speedup": t_ww / t_rs, "flops_f64": flops,
            "layers_in_both": len(common), "ww_kwargs": ww_kwargs, "rs_kwargs": rs_kwargs}


def llm_case(shapes: str, keep: bool, device: str = "auto", gen_device: str | None = None,
             folder: str | None = None) -> dict:
    import rankscope as rs
    from make_synthetic_llm import write
    from rankscope.scan.examples import decoder_shapes

    d = tempfile.mkdtemp(prefix="rankscope-llm-", dir=folder)
    path = os.path.join(d, f"{shapes}.safetensors")
    info = write(path, decoder_shapes(shapes), torch_device=gen_device)
    _drop_page_cache(path)
    try:
        with _PeakAnon() as peak:
            t = time.perf_counter()
            rep = rs.scan(path, progress=False, device=device)
            elapsed = time.perf_counter() - t
        s = rep.scanned
        flagged = sorted(rep.flagged["name"])
        matrices = int(sum(float(r["num_evals"]) / float(r["M"]) for _, r in s.iterrows()))
        return {"case": f"llm:{shapes}", "device": device, "file_bytes": info["bytes"], "seconds": elapsed, "layers": len(s),
                "matrices_per_s": matrices / elapsed, "MB_per_s": info["bytes"] / 2**20 / elapsed,
                "peak_extra_anon_bytes": peak.peak, "flagged": flagged, "planted": info["planted"],
                "planted_is_the_only_flag": flagged == [info["planted"]], "flops_f64": _flops(rep)}
    finally:
        if not keep:
            os.remove(path)
            os.rmdir(d)


def _drop_page_cache(path: str) -> None:
    """Ask the kernel to forget the file's cached pages, so the scan reads it from disk (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    import rankscope as rs
    import torch
    from rankscope.scan.examples import bert, resnet

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="resnet18,resnet50,bert,resnet18-mp,llm")
    ap.add_argument("--llm", default="tinyllama-1.1b")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint")
    ap.add_argument("--device", default="auto", help="device= of the llm scan")
    ap.add_argument("--gen-device", help="draw the synthetic checkpoint with torch on this device")
    ap.add_argument("--folder", help="where to write the synthetic checkpoint (default: the temp folder)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cases = args.cases.split(",")
    results = {"machine": _machine(), "date": datetime.date.today().isoformat(), "build": rs.build_info(),
               "dgemm_f64_flops_per_s": _dgemm_rate(), "cases": []}
    same = dict(mp_fit=True, randomize=True)
    for c in cases:
        if c == "resnet18":
            r = model_case(c, resnet(18), args.repeat, {}, {})
        elif c == "resnet50":
            r = model_case(c, resnet(50), args.repeat, {}, {})
        elif c == "bert":
            r = model_case(c, bert(), max(1, args.repeat // 2), {}, {})
        elif c == "resnet18-mp":
            r = model_case(c, resnet(18), 1, same, dict(same, seed=0))
        elif c == "llm":
            r = llm_case(args.llm, args.keep, args.device, args.gen_device, args.folder)
        else:
            raise SystemExit(f"unknown case {c}")
        r["floor_s"] = r["flops_f64"] / results["dgemm_f64_flops_per_s"]
        results["cases"].append(r)
        print(json.dumps(r), flush=True)
    write_results(results, "scan", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
