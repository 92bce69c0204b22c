"""A zoo of synthetic checkpoints scanned in one process and on a local Ray instance: throughput and
Ray's overhead.

    python benchmarks/bench_ray.py [--models 40] [--shapes tiny] [--repeat 3] [--cases plain,ray-1x1,...]
                                   [--machine NAME] [--out benchmarks/results/ray-<machine>-<date>.json]

The zoo: `--models` bfloat16 safetensors files with the shapes of a small Llama-style decoder
(benchmarks/make_synthetic_llm.py, `--shapes tiny`: hidden 256, FFN 688, 4 layers, vocabulary
4096; 30 matrices, 9.7 MB each), every one with its planted collapsed layer (three quarters of an
FFN down-projection's inputs dead), seeds 0, 1, ... Cases (the table below): the plain scan in this
process on all cores, and scans on Ray with W workers of T engine threads each (a local instance of
W·T CPUs, tasks asking for T), each timed as the median of --repeat runs after a warm-up on four of
the models (which starts and imports Ray's workers); "ray-cold" is `rankscope.scan(zoo, ray=True)`
with no Ray running: it starts a local instance, scans and stops it, every run. Every Ray case's
rows are checked against the plain scan's (column by column, exactly).

Reported per case: seconds, models/s, matrices/s, the ratio to the plain scan, and for the warm Ray
cases Ray's cost per model over the plain scan on the same cores ((t − t_plain) / models for 1x2).
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
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_scan import _machine  # the machine line every scan benchmark writes

#: name → (Ray workers, engine threads per worker); None: the plain scan in this process.
CASES = {
    "plain": None,
    "plain-per-model": "per-model",
    "ray-1x1": (1, 1),
    "ray-2x1": (2, 1),
    "ray-1x2": (1, 2),
    "ray-cold": "cold",
}

#: Written before measuring anything on Ray, as time relative to the plain scan (2 cores), and why;
#: "plain-per-model" was added after the first runs, predicted from a probe of one model (0.09 s
#: alone against 0.05 s per model in the 40-model scan).
#: (The absolute guess, 0.39 s per model, came from a probe taken while other jobs loaded the
#: machine; idle it is ~0.06 s, so the fixed costs per task weigh more than guessed.)
PREDICTED = {
    "plain-per-model": (1.8, "each call scans one model: no engine batches across models, a report per model"),
    "ray-1x1": (1.7, "one core: the engine's ~60 % of the time runs on one thread instead of two"),
    "ray-2x1": (0.9, "two models at once on one thread each: the serial part (fits, report) parallelises too"),
    "ray-1x2": (1.06, "the plain scan plus ~25 ms per task (submit, per-model report, merge)"),
    "ray-cold": (1.4, "ray-2x1 plus starting (~4 s) and stopping Ray and importing rankscope in the workers"),
}





def make_zoo(folder: str, models: int, shapes: str) -> list[str]:
    from make_synthetic_llm import write
    from rankscope.scan.examples import decoder_shapes

    paths = []
    for i in range(models):
        p = os.path.join(folder, f"model{i:03d}.safetensors")
        write(p, decoder_shapes(shapes), seed=i)
        paths.append(p)
    return paths


def _timed(fn, repeat: int) -> tuple[float, list[float], object]:
    times, report = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        report = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, report


def _same_rows(got, want) -> bool:
    import pandas as pd

    a, b = got.layers, want.layers
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    try:
        for c in a.columns:
            pd.testing.assert_series_equal(a[c], b[c], check_exact=True)
    except AssertionError:
        return False
    return True


def run_case(name: str, zoo: str, warm: list[str], repeat: int) -> dict:
    import rankscope as rs

    spec = CASES[name]
    if spec is None:
        rs.scan(warm, progress=False)
        median, times, report = _timed(lambda: rs.scan(zoo, progress=False), repeat)
        return {"seconds": median, "runs": times, "threads": rs.get_num_threads(), "report": report}
    if spec == "per-model":  # what each Ray task does, one after another in this process
        from rankscope.scan import ScanReport
        from rankscope.scan.report import merge

        paths = sorted(os.path.join(zoo, f) for f in os.listdir(zoo))

        def one_by_one():
            return ScanReport(merge(rs.scan(p, progress=False).layers for p in paths))

        rs.scan(warm, progress=False)
        median, times, report = _timed(one_by_one, repeat)
        return {"seconds": median, "runs": times, "threads": rs.get_num_threads(), "report": report}
    import ray

    if spec == "cold":
        median, times, report = _timed(lambda: rs.scan(zoo, ray=True, progress=False), repeat)
        return {"seconds": median, "runs": times, "workers": os.cpu_count(), "threads_per_worker": 1,
                "report": report}
    workers, threads = spec
    ray.init(num_cpus=workers * threads, include_dashboard=False, logging_level="ERROR")
    try:
        rs.scan(warm, ray=True, num_cpus=threads, progress=False)
        median, times, report = _timed(lambda: rs.scan(zoo, ray=True, num_cpus=threads, progress=False), repeat)
    finally:
        ray.shutdown()
    return {"seconds": median, "runs": times, "workers": workers, "threads_per_worker": threads, "report": report}


def main(argv=None) -> int:
    import rankscope as rs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--shapes", default="tiny")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--folder", help="where to write the zoo (default: a temporary folder)")
    ap.add_argument("--machine", default=f"{platform.machine()}-{os.cpu_count()}core",
                    help="machine name in the default output file name")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    import ray

    date = datetime.date.today().isoformat()
    results = {"machine": _machine(), "date": date, "build": rs.build_info(), "ray": ray.__version__,
               "python": platform.python_version(), "models": args.models, "shapes": args.shapes,
               "repeat": args.repeat, "predicted_vs_plain": {k: v[0] for k, v in PREDICTED.items()},
               "predicted_why": {k: v[1] for k, v in PREDICTED.items()}, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="rankscope-ray-bench-", dir=args.folder) as tmp:
        t = time.perf_counter()
        paths = make_zoo(tmp, args.models, args.shapes)
        results["zoo_bytes"] = sum(os.path.getsize(p) for p in paths)
        results["zoo_write_seconds"] = time.perf_counter() - t
        reference = None
        for name in ["plain"] + [c for c in cases if c != "plain"]:  # the plain scan is the reference
            load = os.getloadavg()[0]  # the machine may be shared: what else ran, over the last minute
            r = run_case(name, tmp, paths[:4], args.repeat)
            r["load_1min_before"], r["load_1min_after"] = load, os.getloadavg()[0]
            report = r.pop("report")
            if reference is None:
                reference = report
                results["matrices"] = len(report.scanned)  # every layer here is one matrix
                results["flagged"] = sorted(set(report.flagged["model"]))
            r["models_per_s"] = args.models / r["seconds"]
            r["matrices_per_s"] = results["matrices"] / r["seconds"]
            r["vs_plain"] = r["seconds"] / results["cases"]["plain"]["seconds"] if results["cases"] else 1.0
            r["rows_equal_plain"] = _same_rows(report, reference)
            results["cases"][name] = r
            print(json.dumps({"case": name, **r}), flush=True)
    c = results["cases"]
    if "ray-1x2" in c:  # the same cores as the plain scan: what scanning model by model on Ray adds
        c["ray-1x2"]["overhead_per_model_s"] = (c["ray-1x2"]["seconds"] - c["plain"]["seconds"]) / args.models
        if "plain-per-model" in c:  # ... and of that, what Ray itself adds
            c["ray-1x2"]["ray_overhead_per_model_s"] = (c["ray-1x2"]["seconds"]
                                                         - c["plain-per-model"]["seconds"]) / args.models
    if "ray-cold" in c and "ray-2x1" in c:  # starting and stopping a local instance
        c["ray-cold"]["startup_s"] = c["ray-cold"]["seconds"] - c["ray-2x1"]["seconds"]
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"ray-{args.machine}-{date}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
