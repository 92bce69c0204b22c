"""Command line: ``rankscope scan PATH...`` (the model-zoo scanner) and ``rankscope info``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np


def example_model(seed: int = 0):
    """The built-in example model (rankscope.scan.examples.example_model, imported on use: the
    scanner and pandas stay out of `rankscope info` and `rankscope bench`)."""
    from .scan.examples import example_model as build

    return build(seed)

_SUMMARY = ("model", "name", "shape", "matrix_rank", "rank_loss", "log10_sv_min_rel", "alpha", "stable_rank")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankscope", description="Is your network collapsing? Spectra, ranks "
                                     "and collapse metrics of every weight matrix.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("scan", help="scan the weight matrices of models, checkpoints or a folder of them",
                       description="Scan models: .safetensors (sharded or not), Hugging Face folders, "
                       ".pt/.bin, .npz, .gguf, .onnx, or folders holding many (a zoo).")
    p.add_argument("paths", nargs="*", metavar="PATH", help="weight files or folders")
    p.add_argument("--example", action="store_true", help="scan the built-in example model (one planted "
                   "rank-collapsed layer), written to a temporary safetensors file")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--out", help="write the report: report.csv, .parquet or .json; an existing report is "
                   "resumed (files it holds with the same size and mtime are skipped)")
    p.add_argument("--no-resume", action="store_true", help="with --out: rescan everything")
    p.add_argument("--plots", metavar="DIR", help="write figures there (needs matplotlib)")
    p.add_argument("--conv", choices=("slices", "flatten"), default="slices",
                   help="Conv2d as pooled kh·kw slices (WeightWatcher's way, default) or one flattened matrix")
    p.add_argument("--layers", action="append", metavar="PATTERN",
                   help="only tensors whose name matches (regex or glob; repeatable)")
    p.add_argument("--min-dim", type=int, help="skip matrices whose smaller side is below this")
    p.add_argument("--max-dim", type=int, help="skip matrices whose larger side is above this")
    p.add_argument("--split-qkv", action="store_true", help="split fused QKV weights into three rows")
    p.add_argument("--mp-fit", action="store_true", help="WeightWatcher's Marchenko-Pastur fit")
    p.add_argument("--randomize", action="store_true", help="WeightWatcher's randomised ESD (correlation traps)")
    p.add_argument("--rank-policy", default="auto", choices=("auto", "numpy", "data", "nr", "ww"),
                   help="rank tolerance rule (ww: WeightWatcher's exact rank and entropy)")
    p.add_argument("--estimator", default="ww", choices=("ww", "median", "xmin_peak", "xmin_peak_intended"),
                   help="power-law fit: WeightWatcher's xmin scan or TempBalance's estimators")
    p.add_argument("--fix-fingers", choices=("xmin_peak",), help="WeightWatcher's fix_fingers for --estimator ww")
    p.add_argument("--base", metavar="PATH", help="delta scan: W - W_base for the tensors both share")
    p.add_argument("--collapse-log10", type=float, default=-8.0,
                   help="flag layers with log10(s_min / s_max) below this (default -8)")
    p.add_argument("--collapse-rank-frac", type=float, default=0.05,
                   help="flag layers whose rank loss exceeds this fraction of the smaller side (default 0.05)")
    p.add_argument("--top", type=_positive_int, default=10, help="rows of the printed summary (default 10)")
    p.add_argument("--json", action="store_true", help="print the layer rows as JSON instead of a summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ray", nargs="?", const=True, metavar="ADDRESS",
                   help="scan on Ray, one task per model (pip install \"rankscope[ray]\"); without ADDRESS Ray's "
                   "default (RAY_ADDRESS, a cluster started on this machine, else a new local instance); ADDRESS: "
                   "auto, HOST:PORT or ray://HOST:PORT. Put it after the PATHs, or write --ray=ADDRESS")
    p.add_argument("--max-retries", type=int, help="with --ray: retries of a failed task (default 3)")
    p.add_argument("--cpus-per-task", type=float, help="with --ray: CPUs (engine threads) per task (default 1)")
    p.add_argument("--gpus-per-task", type=float,
                   help="with --ray: GPUs per task (default 1 when --device asks for CUDA, or is auto and the "
                   "cluster has GPUs; else 0)")
    sub.add_parser("info", help="what this install was built with")
    b = sub.add_parser("bench", help="time rankscope against numpy (and torch) on this machine",
                       description="svdvals and matrix_rank on a fixed set of float32 cases against numpy.linalg "
                       "(and torch.linalg.svdvals when torch is installed): median times, ratios, accuracy against "
                       "float64 LAPACK and rank agreement. The cases are in rankscope.bench.")
    b.add_argument("--quick", action="store_true", help="small cases (well under a minute)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where rankscope computes (default cpu)")
    return parser


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "-"
        return f"{v:.2f}" if math.isfinite(v) else ("-inf" if v < 0 else "inf")
    return str(v)


def _print_summary(report, top: int, elapsed: float, out=None) -> None:
    out = out if out is not None else sys.stdout  # looked up per call: redirect_stdout must see it
    s = report.scanned
    flagged = report.flagged
    models = report.models
    print(f"{len(models)} model(s), {len(s)} layers scanned in {elapsed:.2f} s; "
          f"{len(flagged)} flagged as collapsed, {len(report.errors)} errors, "
          f"{int((report.layers['status'] == 'skipped').sum())} tensors skipped.", file=out)
    if len(s):
        worst = flagged if len(flagged) else s.sort_values("log10_sv_min_rel")
        title = "Collapsed layers (rank loss above the fraction, or log10(s_min/s_max) below the threshold)" if len(flagged) else (
            "No collapsed layer. Lowest log10(s_min/s_max)")
        print(f"\n{title}:", file=out)
        rows = worst.head(top).copy()
        for c in ("matrix_rank", "rank_loss"):  # whole numbers (the column is float where rows are skipped);
            rows[c] = [str(int(v)) if math.isfinite(v) else "-" for v in rows[c]]  # NaN: non-finite weights
        rows["alpha"] = rows["alpha"].where(rows["alpha"] > 0)  # -1: WeightWatcher's failed fit, shown as -
        widths = {c: max(len(c), *(len(_fmt(v)) for v in rows[c])) for c in _SUMMARY}
        print("  ".join(c.ljust(widths[c]) for c in _SUMMARY) + "  flags", file=out)
        for _, r in rows.iterrows():
            flags = [f for f, col in (("RANK COLLAPSE", "rank_collapsed"), ("S_MIN", "sv_collapsed"),
                                      ("ALPHA", "alpha_out_of_range")) if r[col]]
            print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in _SUMMARY) + "  " + " ".join(flags), file=out)
    else:  # nothing scanned: say why
        skipped = report.layers[report.layers["status"] == "skipped"]
        for _, r in skipped.head(top).iterrows():
            where = f"{r['model']} {r['name']}" if r["name"] else r["model"]
            print(f"skipped: {where}: {r['warning']}", file=out)
        if len(skipped) > top:
            print(f"... and {len(skipped) - top} more skipped (a larger --top lists them)", file=out)
    for _, e in report.errors.iterrows():
        where = f"{e['model']} {e['tensor']}" if e["tensor"] else e["model"]
        print(f"error: {where}: {e['error']}", file=out)
    r = report.resumed
    if r and (r["unchanged"] or r["not_listed"]):
        print(f"\nResumed from {r['from']}: {len(r['unchanged'])} model(s) unchanged since it was written, "
              "not rescanned" + _names(r["unchanged"]), file=out)
        if r["not_listed"]:
            print(f"Kept from it, though this scan did not list them: {len(r['not_listed'])} model(s)"
                  + _names(r["not_listed"]) + " (--no-resume starts a fresh report)", file=out)


def _names(names: list[str], most: int = 5) -> str:
    if not names:
        return ""
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return " (" + ", ".join(names[:most]) + more + ")"


def _scan(args, parser) -> int:
    import rankscope as rs

    from .scan.report import ScanReport

    if isinstance(args.ray, str) and args.ray not in ("auto", "local") and ":" not in args.ray:
        parser.error(f"--ray {args.ray}: not a Ray address (auto, HOST:PORT or ray://HOST:PORT); put --ray after "
                     "the PATHs, or write --ray=ADDRESS")
    if not args.paths and not args.example:
        parser.error("give one or more PATHs to scan, or --example for the built-in model")
    options = {"device": args.device, "conv": args.conv, "layers": args.layers, "min_dim": args.min_dim,
               "max_dim": args.max_dim, "split_qkv": args.split_qkv, "mp_fit": args.mp_fit,
               "randomize": args.randomize, "rank_policy": args.rank_policy, "estimator": args.estimator,
               "fix_fingers": args.fix_fingers, "collapse_log10": args.collapse_log10,
               "collapse_rank_frac": args.collapse_rank_frac, "progress": False if args.quiet else None,
               "resume": not args.no_resume, "out": args.out, "base": args.base, "ray": args.ray,
               "max_retries": args.max_retries, "num_cpus": args.cpus_per_task, "num_gpus": args.gpus_per_task}
    if args.plots:  # before scanning: a --plots that is not a folder fails now, not after the scan
        try:
            os.makedirs(args.plots, exist_ok=True)
        except OSError as e:
            print(f"rankscope scan: error: --plots: cannot make the folder {args.plots!r}: {e.strerror or e}",
                  file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="rankscope-example-") as tmp:
        paths = list(args.paths)
        if args.example:
            from safetensors.numpy import save_file

            path = os.path.join(tmp, "example.safetensors")
            save_file(example_model(), path)
            paths.append(path)
        try:
            report: ScanReport = rs.scan(paths if len(paths) > 1 else paths[0], **options)
        except (ValueError, TypeError, ImportError, OSError) as e:  # OSError: --out cannot be written
            print(f"rankscope scan: error: {e}", file=sys.stderr)
            return 2
    if args.plots:
        from .scan import plots

        written = plots.write_all(report, args.plots)
        print(f"{len(written)} figures written to {args.plots}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.records(), indent=1, allow_nan=False))
    else:
        _print_summary(report, args.top, report.seconds)
    return 0 if len(report.scanned) else 1


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `rankscope scan ... --json | head`: the reader has gone, nothing to say
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        import rankscope as rs

        print(json.dumps(rs.build_info(), indent=2))
        return 0
    if args.command == "bench":
        from . import bench

        try:
            rows = bench.run(quick=args.quick, device=args.device)
        except (RuntimeError, ValueError) as e:
            print(f"rankscope bench: error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(rows, indent=1, allow_nan=False) if args.json else bench.format_table(rows))
        return 0
    return _scan(args, parser)


if __name__ == "__main__":
    sys.exit(main())
