"""examples/monitor_training.py end to end: a short run through its CLI, then what its monitor recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "monitor_training.py"


def test_monitor_training(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pd = pytest.importorskip("pandas")
    out = tmp_path / "monitor.png"
    # 120 steps: RankMe, alpha and the small singular values have parted by then (rank loss needs
    # ~50 more, see the full run).
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "120", "--every", "20", "--out", str(out),
                           "--history", str(tmp_path)], check=False, capture_output=True, text=True,
                          timeout=300,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.stat().st_size > 20_000  # a drawn figure, not an empty canvas
    assert "test accuracy" in proc.stdout and "overhead" in proc.stdout

    def final(run: str) -> dict[tuple[str, str], float]:
        h = pd.read_csv(tmp_path / f"monitor_{run}.csv")
        assert set(h["step"]) == {1, 21, 41, 61, 81, 101}
        last = h[h["step"] == h["step"].max()]
        return {(r.layer, r.metric): r.value for r in last.itertuples()}

    normal, excessive = final("normal"), final("excessive")
    # The over-regularised run's features lose rank: RankMe well below the normal run's on both layers
    # (ratios at step 101 over seeds 0-3: act3 0.38-0.59, act4 0.49-0.68).
    for layer, most in (("act3", 0.7), ("act4", 0.8)):
        assert excessive[layer, "rankme"] < most * normal[layer, "rankme"], (layer, excessive, normal)
    # Its weights head for rank loss: fc4's smallest singular value ~1.4 decades lower (conv3's square
    # 64×64 slices start near zero, so their small end is noise), while the normal run has lost none;
    # and their ESDs' alpha falls further (1.3-1.4 against 1.7-2.1).
    assert excessive["fc4.weight", "log10_sv_min"] < normal["fc4.weight", "log10_sv_min"] - 1.0, (excessive, normal)
    assert normal["fc4.weight", "rank_loss"] == 0
    for layer in ("conv2.weight", "conv3.weight", "fc4.weight"):
        assert excessive[layer, "alpha"] < normal[layer, "alpha"] - 0.2, (layer, excessive, normal)
