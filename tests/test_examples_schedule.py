"""examples/tempbalance_schedule.py: TempBalance's layer-wise rates applied to an optimizer every N steps."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tempbalance_schedule.py"


def test_tempbalance_schedule():
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("tempbalance_schedule", EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    data = ex.data(0)
    tb = ex.train(True, *data, steps=60, every=20, seed=0)
    plain = ex.train(False, *data, steps=60, every=20, seed=0)
    assert [u[0] for u in tb["updates"]] == [1, 21, 41]
    for _, vals, ratio in tb["updates"]:
        alphas = [a for a, _ in vals.values()]
        lo, hi = min(alphas), max(alphas)
        for layer, (a, m) in vals.items():
            # TempBalance's map: 0.5 at the smallest alpha, 1.5 at the largest, linear in between
            assert m == pytest.approx(0.5 + (a - lo) / (hi - lo), rel=1e-12)
            assert ratio[layer] == pytest.approx(m, rel=1e-12)  # applied to that layer's group
        assert ratio[None] == pytest.approx(1.0)  # parameters of no measured layer: the scheduled rate
        assert set(vals) == {"conv2.weight", "fc3.weight", "head.weight"}
    assert tb["accuracy"] > 0.8 and plain["accuracy"] > 0.8
    assert not math.isclose(tb["accuracy"], 0.0)
