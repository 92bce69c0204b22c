"""rankscope.scan.fits.fit_powerlaw / mp_fit against WeightWatcher 0.7.7's on the same ESDs.

Run: ``python benchmarks/bench_fits.py`` (standalone; needs the ``test`` extra for weightwatcher).
Prints one row per case: best-of-`rounds` wall times, the ratio WW / rankscope, and the agreement
(xmin equal and |Δα|/α for the power law; |Δσ|/σ and num_spikes equal for the MP fit).
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
from rankscope.scan import fits

# name: (matrix shape, Student-t df or None for Gaussian, rounds for rankscope, rounds for WW)
CASES = {
    "t3 768x768": ((768, 768), 3.0, 20, 3),
    "t3 3072x3072": ((3072, 3072), 3.0, 10, 1),
    "t3 4096x4096": ((4096, 4096), 3.0, 10, 1),
    "gauss 768x3072": ((3072, 768), None, 20, 3),
    "gauss 3072x4096": ((4096, 3072), None, 10, 1),
    "gauss 4096x4096": ((4096, 4096), None, 10, 1),
}


def _esd(shape, df, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape) if df is None else rng.standard_t(df, size=shape)
    G = W.T @ W if shape[0] >= shape[1] else W @ W.T
    return np.sort(np.clip(np.linalg.eigvalsh(G), 0, None))


def _best(fn, rounds):
    best, out = np.inf, None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.CRITICAL + 1)
    watcher = weightwatcher.WeightWatcher()
    rows = []
    for name, (shape, df, rounds, ww_rounds) in CASES.items():
        ev = _esd(shape, df)
        N, M = max(shape), min(shape)
        ww_mp = functools.partial(
            watcher.mp_fit, ev.copy(), N, M, 1, "l", 0, 0, False, False, "", "b", 0.5, True, ev
        )
        t_ours, ours = _best(functools.partial(fits.fit_powerlaw, ev), rounds)
        t_ww, ref = _best(functools.partial(watcher.fit_powerlaw, ev.copy(), plot=False), ww_rounds)
        same = "==" if ours["xmin"] == ref[2] else "!="
        agree = f"xmin {same}, dα/α {abs(ours['alpha'] - ref[0]) / ref[0]:.1e}"
        rows.append(("fit_powerlaw", name, ev.size, t_ww, t_ours, agree))
        t_ours, ours = _best(functools.partial(fits.mp_fit, ev, N=N, M=M), rounds)
        t_ww, ref = _best(ww_mp, ww_rounds)
        same = "==" if ours["num_spikes"] == ref[0] else "!="
        agree = f"spikes {same}, dσ/σ {abs(ours['sigma_mp'] - ref[1]) / ref[1]:.1e}"
        rows.append(("mp_fit", name, ev.size, t_ww, t_ours, agree))
    head = ("function", "case", "N", "WW s", "rankscope s", "ratio", "agreement")
    print("{:<13} {:<17} {:>5} {:>9} {:>12} {:>7}  {}".format(*head))
    for fn, name, n, t_ww, t_ours, agree in rows:
        ratio = t_ww / t_ours
        print(f"{fn:<13} {name:<17} {n:>5} {t_ww:>9.4f} {t_ours:>12.5f} {ratio:>7.1f}  {agree}")


if __name__ == "__main__":
    main()
