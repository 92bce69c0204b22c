"""Command line: ``rankscope scan --example`` and ``rankscope info``.

Scanning weight files arrives with the model-zoo scanner; until then ``scan`` runs on a built-in
example model with one planted rank-collapsed layer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def example_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A small transformer-shaped float32 model; ``blocks.1.mlp.fc2`` is planted rank-collapsed
    (rank 6 of 64, the rest at 1e-9 relative: what heavy weight decay drives a layer to)."""
    rng = np.random.default_rng(seed)
    d, ff, vocab, layers = 64, 256, 1000, 2

    def dense(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    model = {"embed.weight": dense(vocab, d)}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            model[f"blocks.{i}.attn.{name}.weight"] = dense(d, d)
        model[f"blocks.{i}.mlp.fc1.weight"] = dense(ff, d)
        model[f"blocks.{i}.mlp.fc2.weight"] = dense(d, ff)
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    v, _ = np.linalg.qr(rng.standard_normal((ff, d)))
    s = np.concatenate([np.linspace(1.0, 0.5, 6), np.full(d - 6, 1e-9)])
    model["blocks.1.mlp.fc2.weight"] = ((u * s) @ v.T).astype(np.float32)
    model["head.weight"] = dense(10, d)
    return model


def _scan(model: dict[str, np.ndarray], collapse_log10: float) -> list[dict]:
    import rankscope as rs

    names = list(model)
    mats = [model[n] for n in names]
    rep = rs.spectrum_report(mats)
    rows = []
    for i, name in enumerate(names):
        row = {"layer": name, "shape": "x".join(map(str, mats[i].shape))}
        for key in ("matrix_rank", "rank_loss", "log10_sv_min", "sv_max", "effective_rank", "stable_rank"):
            row[key] = rep[key][i].item()
        rel = row["log10_sv_min"] - np.log10(row["sv_max"]) if row["sv_max"] > 0 else -np.inf
        row["collapsed"] = bool(row["rank_loss"] > 0 or rel < collapse_log10)
        rows.append(row)
    return rows


def _print_table(rows: list[dict], out=None) -> None:
    out = out if out is not None else sys.stdout  # looked up per call: redirect_stdout must see the table
    head = f"{'layer':<26} {'shape':>9} {'rank':>5} {'loss':>5} {'log10 s_min':>11} {'eff. rank':>9} {'stable':>7}  flag"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        flag = "RANK COLLAPSE" if r["collapsed"] else ""
        print(
            f"{r['layer']:<26} {r['shape']:>9} {r['matrix_rank']:>5} {r['rank_loss']:>5} "
            f"{r['log10_sv_min']:>11.2f} {r['effective_rank']:>9.2f} {r['stable_rank']:>7.2f}  {flag}",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rankscope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="spectra and rank metrics of every weight matrix of a model")
    scan.add_argument("path", nargs="?", help="a weights file (arrives with the scanner; use --example)")
    scan.add_argument("--example", action="store_true", help="scan the built-in example model")
    scan.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    scan.add_argument("--collapse-log10", type=float, default=-8.0,
                      help="flag layers with log10(s_min / s_max) below this (default -8)")
    sub.add_parser("info", help="what this install was built with")
    args = parser.parse_args(argv)

    if args.command == "info":
        import rankscope as rs

        print(json.dumps(rs.build_info(), indent=2))
        return 0
    if not args.example:
        parser.error("scanning weight files is not implemented yet; run `rankscope scan --example`")
    model = example_model()
    t0 = time.perf_counter()
    rows = _scan(model, args.collapse_log10)
    elapsed = time.perf_counter() - t0
    if args.json:
        # Strict JSON has no Infinity/NaN (log10_sv_min is -inf for a zero s_min): those become null.
        clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows]
        print(json.dumps(clean, indent=1, allow_nan=False))
    else:
        _print_table(rows)
        n_bad = sum(r["collapsed"] for r in rows)
        print(f"\n{len(rows)} matrices scanned in {elapsed * 1e3:.1f} ms; {n_bad} flagged as rank-collapsed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
