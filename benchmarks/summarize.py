"""Turns a pytest-benchmark JSON into the ratio table: median time per library and rankscope's
speed-up against each, with accuracy. Usage: python benchmarks/summarize.py out.json [> table.md]"""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        rows[(info["op"], info["case"])][info["lib"]] = (b["stats"]["median"], info)
    cpu = data["machine_info"].get("cpu", {}).get("brand_raw", "?")
    print(f"Machine: {cpu}, {data['machine_info'].get('cpu', {}).get('count', '?')} cores; "
          f"{data['datetime'][:10]}; median of rounds, float32 inputs.\n")
    print("| op | case | rankscope | numpy | torch | vs numpy | vs torch | error rankscope / numpy (max abs / s1) "
          "| rankscope, float64 output |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (op, case), libs in rows.items():
        t = {k: v[0] for k, v in libs.items()}
        rs_t = t.get("rankscope")
        fmt = {k: f"{v * 1e3:.1f} ms" for k, v in t.items()}
        ratio = {k: f"{v / rs_t:.1f}×" for k, v in t.items()} if rs_t else {}

        if op == "svdvals":
            acc = " / ".join(f"{libs[k][1].get('max_abs_err_rel_s1', float('nan')):.1e}" for k in ("rankscope", "numpy")
                             if k in libs)
            f64 = libs.get("rankscope", (0, {}))[1].get("max_abs_err_rel_s1_f64_out")
            f64 = f"{f64:.1e}" if f64 is not None else "–"
        else:
            acc = "ranks equal numpy's" if libs.get("rankscope", (0, {}))[1].get("agrees_with_numpy") else "ranks differ"
            f64 = "–"
        cell = [fmt.get(k, "–") for k in ("rankscope", "numpy", "torch")] + [ratio.get(k, "–") for k in ("numpy", "torch")]
        print(f"| {op} | {case} | " + " | ".join(cell) + f" | {acc} | {f64} |")


if __name__ == "__main__":
    main(sys.argv[1])
