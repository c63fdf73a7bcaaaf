"""Piecewise-linear load table and the load-step schedule."""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np


class LoadTable:
    """Load factor lambda(t), piecewise linear through (times[i], factors[i]).

    ``times`` [s] strictly increasing, at least two entries; the structure
    starts unloaded, so ``factors[0]`` must be 0.
    """

    def __init__(self, times: Sequence[float], factors: Sequence[float]):
        t = np.asarray(times, dtype=float)
        f = np.asarray(factors, dtype=float)
        if t.ndim != 1 or t.size < 2:
            raise ValueError("load table needs at least two times")
        if f.shape != t.shape:
            raise ValueError(f"load table: {t.size} times but {f.size} factors")
        if not np.all(np.isfinite(t)) or not np.all(np.isfinite(f)):
            raise ValueError("load table entries must be finite numbers")
        if np.any(np.diff(t) <= 0):
            raise ValueError(f"load table times must be strictly increasing, got {list(times)}")
        if f[0] != 0.0:
            raise ValueError(f"load table must start unloaded (factors[0] = 0), got {f[0]}")
        self.times, self.factors = t, f

    def __call__(self, t: float) -> float:
        return float(np.interp(t, self.times, self.factors))

    @property
    def start(self) -> float:
        return float(self.times[0])

    @property
    def end(self) -> float:
        return float(self.times[-1])

    def step_times(self, steps: int | None = None, max_dt: float | None = None, substeps: int = 1) -> List[float]:
        """End times of the nominal steps; every table time is hit exactly.

        ``steps``: about that many uniform steps over the whole table;
        ``max_dt``: largest step [s].  Default: 10 steps per table segment.
        ``substeps``: each of those steps split into that many equal steps (a refinement whose
        times include the unrefined ones exactly).
        """
        span = self.end - self.start
        if max_dt is None and steps is not None:
            max_dt = span / steps
        out: List[float] = []
        for t0, t1 in zip(self.times[:-1], self.times[1:]):
            n = 10 if max_dt is None else max(1, math.ceil((t1 - t0) / max_dt * (1 - 1e-12)))
            out += [float(t0 + (t1 - t0) * k / n) for k in range(1, n + 1)]
        if substeps > 1:
            ends = out
            out = []
            for a, b in zip([self.start] + ends[:-1], ends):
                out += [float(a + (b - a) * j / substeps) for j in range(1, substeps)] + [b]
        return out
