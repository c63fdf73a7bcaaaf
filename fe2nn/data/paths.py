"""Macro strain-path families for RVE training data (Mandel notation, SI units).

Five families, each a dataclass config (also the ``[paths.<family>]`` tables of
``fe2nn generate``):

* ``random_walk`` -- smooth random walks: the increments follow a per-segment
  drift direction plus Gaussian-smoothed (correlated) noise; segments have
  log-uniform strain rates, may be holds (strain constant, time advancing) and
  may reverse the previous loading direction (unloading / reversal).
* ``monotonic`` -- proportional monotonic loading in a random direction.
* ``cyclic`` -- tension-compression cycles along a random direction with random
  amplitude, mean strain and number of cycles.
* ``reversal_walk`` -- random walks (same generator and keys) whose defaults give fewer,
  longer, straighter segments that mostly reverse: unloading and reverse plastic flow.
* ``recorded`` -- the strain histories of quadrature points of a structural solve
  (``fe2nn solve`` with ``output.strain_paths = true``), drawn at random and resampled: the
  paths a surrogate meets in that kind of structure.

**Strain bound.** ``max_strain`` bounds the full Mandel (Frobenius) norm
``|eps| = sqrt(eps:eps)``, which includes the volumetric part.  Hence the
equivalent strain ``sqrt(2/3 dev(eps):dev(eps))`` is at most
``sqrt(2/3) * max_strain``.

**Rates and time steps.** Each loading increment k gets the time step
``dt_k = |d eps_k| / rate`` so that its strain rate ``|d eps_k| / dt_k`` is exactly
the rate drawn for its segment (random walks) or path (monotonic, cyclic),
log-uniform in ``rate = [lo, hi]`` [1/s].  Hold increments (``d eps = 0``) last
``step / rate`` seconds.  Steps are therefore non-uniform in time.

**Directions.** A random direction is a standard Gaussian 6-vector whose
volumetric part is scaled by ``volumetric_weight`` before normalisation (plastic
flow is isochoric; large volumetric strains only produce elastic pressure).

**Reproducibility.** A sample's path is a pure function of (global seed, sample
index, family config (for ``recorded``: and the recorded file, whose sha256 the config
carries), number of steps): its generator is
``numpy.random.default_rng([seed, index])``.  It does not depend on batching
or on the number of MPI ranks.

Example::

    from fe2nn.data.paths import RandomWalk, sample_path
    strain, time = sample_path(RandomWalk(), n_steps=200, seed=1, index=0)
    # strain (201, 6) [-], time (201,) [s], strain[0] = 0, time[0] = 0
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from fe2nn.config import in_range, non_negative, positive
from fe2nn.io_utils import pyplot, save_figure

SQRT3 = np.sqrt(3.0)
_VOL = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]) / SQRT3  # unit volumetric Mandel direction


def _range_check(lo_min: float = 0.0, integer: bool = False):
    """Check of a [min, max] pair: min > lo_min (min >= lo_min for integers) and min <= max."""

    def check(v):
        if len(v) != 2:
            return "must be a list [min, max]"
        ok = v[0] >= lo_min if integer else v[0] > lo_min
        if not ok or v[1] < v[0]:
            rel = "<=" if integer else "<"
            return f"must be [min, max] with {lo_min} {rel} min <= max"
        return None

    return check


def _doc(doc, check=None):
    return dict(doc=doc, check=check) if check else dict(doc=doc)


#: keys of the random-walk families whose defaults differ between them: doc and check
_WALK_KEYS = {
    "step_strain": ("[min, max] increment norm |d eps|, log-uniform per segment [-]", _range_check()),
    "segments": ("[min, max] number of segments", _range_check(1, integer=True)),
    "hold_probability": ("probability of a hold segment", in_range(0, 1)),
    "reversal_probability": ("probability that a segment reverses the last loading direction", in_range(0, 1)),
    "noise": ("amplitude of the smooth direction noise relative to the drift", non_negative),
}


def _walk(key: str, default):
    """A random-walk config field with its family's default."""
    meta = _doc(*_WALK_KEYS[key])
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RandomWalk:
    """Smooth random walk with holds and reversals (see module docstring)."""

    count: int = field(default=0, metadata=_doc("number of samples", non_negative))
    max_strain: float = field(default=0.02, metadata=_doc("bound on the Mandel norm |eps| [-]", positive))
    step_strain: List[float] = _walk("step_strain", [2e-5, 4e-4])
    rate: List[float] = field(default_factory=lambda: [1e-4, 1e-1],
                              metadata=_doc("[min, max] strain rate, log-uniform per segment [1/s]", _range_check()))
    segments: List[int] = _walk("segments", [3, 8])
    hold_probability: float = _walk("hold_probability", 0.2)
    reversal_probability: float = _walk("reversal_probability", 0.5)
    smoothing: float = field(default=8.0, metadata=_doc("correlation length of the direction noise [increments]",
                                                        positive))
    noise: float = _walk("noise", 0.6)
    volumetric_weight: float = field(default=0.2, metadata=_doc("scale of the volumetric part of directions",
                                                                in_range(0, 1)))


@dataclass
class ReversalWalk(RandomWalk):
    """A random walk that mostly reverses: fewer, longer and straighter segments with large
    increments, so that a reversal unloads and goes on into reverse plastic flow (the
    load-unload-reverse histories of structures).  Same generator and keys as ``random_walk``,
    other defaults."""

    step_strain: List[float] = _walk("step_strain", [1e-4, 4e-4])
    segments: List[int] = _walk("segments", [2, 6])
    hold_probability: float = _walk("hold_probability", 0.15)
    reversal_probability: float = _walk("reversal_probability", 0.8)
    noise: float = _walk("noise", 0.3)


@dataclass
class Monotonic:
    """Proportional monotonic loading to a random final strain."""

    count: int = field(default=0, metadata=_doc("number of samples", non_negative))
    strain: List[float] = field(default_factory=lambda: [0.002, 0.02],
                                metadata=_doc("[min, max] final Mandel norm |eps|, uniform [-]", _range_check()))
    rate: List[float] = field(default_factory=lambda: [1e-4, 1e-1],
                              metadata=_doc("[min, max] strain rate, log-uniform per path [1/s]", _range_check()))
    step_variation: float = field(default=0.5, metadata=_doc("relative spread of increment sizes", in_range(0, 0.95)))
    volumetric_weight: float = field(default=0.2, metadata=_doc("scale of the volumetric part of directions",
                                                                in_range(0, 1)))


@dataclass
class Cyclic:
    """Tension-compression cycles eps(s) = d (mean r(s) + amplitude sin(2 pi cycles s))."""

    count: int = field(default=0, metadata=_doc("number of samples", non_negative))
    amplitude: List[float] = field(default_factory=lambda: [0.002, 0.015],
                                   metadata=_doc("[min, max] strain amplitude (Mandel norm), uniform [-]",
                                                 _range_check()))
    max_mean: float = field(default=0.005, metadata=_doc("mean strain drawn uniformly in [-max_mean, max_mean] [-]",
                                                         non_negative))
    max_strain: float = field(default=0.02, metadata=_doc("bound on |mean| + amplitude [-]", positive))
    cycles: List[int] = field(default_factory=lambda: [1, 4],
                              metadata=_doc("[min, max] number of cycles", _range_check(1, integer=True)))
    rate: List[float] = field(default_factory=lambda: [1e-4, 1e-1],
                              metadata=_doc("[min, max] strain rate, log-uniform per path [1/s]", _range_check()))
    volumetric_weight: float = field(default=0.2, metadata=_doc("scale of the volumetric part of directions",
                                                                in_range(0, 1)))

    def validate(self) -> None:
        if self.amplitude[1] > self.max_strain:
            raise ValueError(f"amplitude max {self.amplitude[1]} must be <= max_strain {self.max_strain}")


@dataclass
class Recorded:
    """Strain paths recorded at the quadrature points of a structural solve (``fe2nn solve`` with
    ``output.strain_paths = true``): sample k takes the history of a point drawn at random (among
    those whose strain path reaches ``min_path``), scales its times by a factor drawn log-uniformly
    from ``time_scale`` and resamples it linearly onto the dataset's increments, equal in time.
    Choose ``n_steps`` a multiple of the recorded steps so that every recorded state is kept."""

    count: int = field(default=0, metadata=_doc("number of samples", non_negative))
    file: str = field(default="", metadata=_doc("strain_paths.h5 of a solve, relative to the config file"))
    min_path: float = field(default=0.0, metadata=_doc(
        "draw only points whose accumulated strain path sum |d eps| (Mandel norm) reaches this [-]", non_negative))
    time_scale: List[float] = field(default_factory=lambda: [1.0, 1.0], metadata=_doc(
        "[min, max] factor on the recorded times, log-uniform per path (the strain rates are divided by it)",
        _range_check()))
    file_sha256: str = field(default="", metadata=_doc(
        "sha256 of the file; filled in when the config is read, checked when given"))

    def validate(self) -> None:
        if self.count > 0 and not self.file:
            raise ValueError("file: a strain_paths.h5 file is needed when count > 0")

    def load(self, path) -> None:
        """Read the recorded paths from ``path`` (the resolved ``file``) and check its hash."""
        import hashlib

        from fe2nn.errors import UserError

        try:
            import h5py

            with h5py.File(path, "r") as fh:
                strain, time = np.asarray(fh["strain"], dtype=np.float64), np.asarray(fh["time"], dtype=np.float64)
        except (OSError, KeyError) as err:
            raise UserError(f"{path}: not a strain_paths.h5 file of fe2nn solve (output.strain_paths = true): "
                            f"{err}") from None
        if strain.ndim != 3 or strain.shape[2] != 6 or strain.shape[1] != time.size or time.size < 2 \
                or not (np.diff(time) > 0).all():
            raise UserError(f"{path}: expected 'strain' (points, steps + 1, 6) and increasing 'time' (steps + 1,), "
                            f"got {strain.shape} and {time.shape}")
        if np.abs(strain[:, 0]).max() > 0:
            raise UserError(f"{path}: the recorded paths must start from zero strain (row 0 of 'strain')")
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if self.file_sha256 and self.file_sha256 != digest:
            raise UserError(f"{path}: sha256 {digest[:16]}... differs from paths.recorded.file_sha256 "
                            f"{self.file_sha256[:16]}...; the file has changed")
        self.file_sha256 = digest
        length = np.linalg.norm(np.diff(strain, axis=1), axis=2).sum(axis=1)
        eligible = np.flatnonzero(length >= self.min_path)
        if eligible.size == 0:
            raise UserError(f"{path}: no point's strain path reaches paths.recorded.min_path = {self.min_path} "
                            f"(longest: {length.max():.3g})")
        self._recorded = (strain, time - time[0], eligible)


#: family name -> config class; the position is the family code stored in datasets (new families
#: are appended, so that a config without them numbers its samples as before)
FAMILIES: Dict[str, type] = {"random_walk": RandomWalk, "monotonic": Monotonic, "cyclic": Cyclic,
                             "reversal_walk": ReversalWalk, "recorded": Recorded}
FAMILY_NAMES: Tuple[str, ...] = tuple(FAMILIES)
#: the families generated from their settings alone (``recorded`` also needs a file)
SYNTHETIC: Tuple[str, ...] = FAMILY_NAMES[:4]


# -- helpers ------------------------------------------------------------------------------
def _loguniform(rng: np.random.Generator, lo_hi: Sequence[float], size=None):
    lo, hi = np.log(lo_hi[0]), np.log(lo_hi[1])
    return np.exp(rng.uniform(lo, hi, size))


def random_directions(rng: np.random.Generator, n: int, volumetric_weight: float) -> np.ndarray:
    """n unit Mandel directions (n, 6) with the volumetric part scaled by ``volumetric_weight``."""
    g = rng.standard_normal((n, 6))
    return _shape_directions(g, volumetric_weight)


def _shape_directions(g: np.ndarray, volumetric_weight: float) -> np.ndarray:
    vol = (g @ _VOL)[:, None] * _VOL
    d = (g - vol) + volumetric_weight * vol
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _smooth(noise: np.ndarray, length: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 (T, 6), rescaled to unit rms per component."""
    T = noise.shape[0]
    k = np.arange(T)
    kernel = np.exp(-0.5 * ((k[:, None] - k[None, :]) / length) ** 2)
    out = kernel @ noise
    return out / np.sqrt((out ** 2).mean(axis=0, keepdims=True) + 1e-300)


def _max_scale(p: np.ndarray, q: np.ndarray, bound: float) -> float:
    """Largest a in [0, 1] with |p + a q_k| <= bound for all rows q_k (given |p| <= bound)."""
    qq = (q * q).sum(1)
    pq = q @ p
    c = min(float(p @ p) - bound * bound, 0.0)  # <= 0 up to rounding
    moving = qq > 0
    if not moving.any():
        return 1.0
    disc = pq[moving] ** 2 + qq[moving] * (-c)
    roots = (-pq[moving] + np.sqrt(np.maximum(disc, 0.0))) / qq[moving]
    return float(np.clip(roots.min(), 0.0, 1.0))


def _finish(increments: np.ndarray, dt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    T = increments.shape[0]
    strain = np.zeros((T + 1, 6))
    strain[1:] = np.cumsum(increments, axis=0)
    time = np.zeros(T + 1)
    time[1:] = np.cumsum(dt)
    return strain, time


# -- families -----------------------------------------------------------------------------
def random_walk(cfg: RandomWalk, n_steps: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One random-walk path: strain (T+1, 6) [-], time (T+1,) [s]."""
    T = n_steps
    n_seg = int(min(rng.integers(cfg.segments[0], cfg.segments[1] + 1), T))
    cuts = np.sort(rng.choice(np.arange(1, T), n_seg - 1, replace=False)) if n_seg > 1 else np.array([], int)
    bounds = np.concatenate([[0], cuts, [T]]).astype(int)
    hold = rng.random(n_seg) < cfg.hold_probability
    hold[0] = False  # start by loading
    reverse = rng.random(n_seg) < cfg.reversal_probability
    rate = _loguniform(rng, cfg.rate, n_seg)
    step = _loguniform(rng, cfg.step_strain, n_seg)
    drift = random_directions(rng, n_seg, cfg.volumetric_weight)
    noise = _smooth(rng.standard_normal((T, 6)), cfg.smoothing)

    increments = np.zeros((T, 6))
    dt = np.empty(T)
    position = np.zeros(6)
    last_load = None  # net increment of the last loading segment
    for s in range(n_seg):  # loop over a handful of segments; steps are vectorised
        a, b = bounds[s], bounds[s + 1]
        if hold[s]:
            dt[a:b] = step[s] / rate[s]
            continue
        d = -last_load / np.linalg.norm(last_load) if (reverse[s] and last_load is not None) else drift[s]
        dirs = _shape_directions(d[None, :] + cfg.noise * noise[a:b] / np.sqrt(6.0), cfg.volumetric_weight)
        inc = step[s] * dirs
        q = np.cumsum(inc, axis=0)
        alpha = _max_scale(position, q, cfg.max_strain)
        if alpha < 1.0:  # would leave the ball: reverse the segment if that goes further
            alpha_back = _max_scale(position, -q, cfg.max_strain)
            if alpha_back > alpha:
                inc, alpha = -inc, alpha_back
        if alpha < 1e-6:  # stuck on the bound: hold instead
            dt[a:b] = step[s] / rate[s]
            continue
        inc = alpha * inc
        increments[a:b] = inc
        dt[a:b] = np.linalg.norm(inc, axis=1) / rate[s]
        position = position + inc.sum(0)
        last_load = inc.sum(0)
    return _finish(increments, dt)


def monotonic(cfg: Monotonic, n_steps: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One proportional monotonic path: strain (T+1, 6), time (T+1,)."""
    d = random_directions(rng, 1, cfg.volumetric_weight)[0]
    magnitude = rng.uniform(cfg.strain[0], cfg.strain[1])
    rate = _loguniform(rng, cfg.rate)
    w = rng.uniform(1.0 - cfg.step_variation, 1.0 + cfg.step_variation, n_steps)
    w *= magnitude / w.sum()  # increment norms, summing to the final magnitude
    return _finish(w[:, None] * d, w / rate)


def cyclic(cfg: Cyclic, n_steps: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One tension-compression path along a random direction: strain (T+1, 6), time (T+1,)."""
    d = random_directions(rng, 1, cfg.volumetric_weight)[0]
    amplitude = rng.uniform(cfg.amplitude[0], cfg.amplitude[1])
    room = max(cfg.max_strain - amplitude, 0.0)
    mean = rng.uniform(-1.0, 1.0) * min(cfg.max_mean, room)
    cycles = int(rng.integers(cfg.cycles[0], cfg.cycles[1] + 1))
    rate = _loguniform(rng, cfg.rate)
    # jittered grid in s in [0, 1]: non-uniform steps, no step symmetric about a peak
    w = rng.uniform(0.7, 1.3, n_steps)
    s = np.concatenate([[0.0], np.cumsum(w) / w.sum()])
    ramp = np.minimum(s * 4.0 * cycles, 1.0)  # mean reached after a quarter cycle
    x = mean * 0.5 * (1.0 - np.cos(np.pi * ramp)) + amplitude * np.sin(2.0 * np.pi * cycles * s)
    dx = np.diff(x)
    floor = 1e-3 * np.abs(dx).mean()
    dt = np.maximum(np.abs(dx), floor) / rate
    return _finish(dx[:, None] * d, dt)


def recorded(cfg: Recorded, n_steps: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One recorded point history, time-scaled and resampled: strain (T+1, 6), time (T+1,)."""
    if not hasattr(cfg, "_recorded"):
        cfg.load(cfg.file)
    strain, time, eligible = cfg._recorded
    point = eligible[rng.integers(eligible.size)]
    scale = float(_loguniform(rng, cfg.time_scale))
    t = np.linspace(0.0, time[-1], n_steps + 1)
    eps = np.stack([np.interp(t, time, strain[point, :, j]) for j in range(6)], axis=1)
    return eps, t * scale


_GENERATORS = {"random_walk": random_walk, "monotonic": monotonic, "cyclic": cyclic, "reversal_walk": random_walk,
               "recorded": recorded}


def family_name(cfg) -> str:
    for name, cls in FAMILIES.items():
        if type(cfg) is cls:  # exact: a ReversalWalk is also a RandomWalk
            return name
    raise TypeError(f"not a path-family config: {cfg!r}")


def sample_path(cfg, n_steps: int, seed: int, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """Path of sample ``index``: strain (T+1, 6) [-], time (T+1,) [s]; pure in its arguments."""
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    rng = np.random.default_rng([int(seed), int(index)])
    return _GENERATORS[family_name(cfg)](cfg, n_steps, rng)


def sample_paths(cfgs: Sequence, n_steps: int, seed: int, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Stack the paths of several samples: strain (n, T+1, 6), time (n, T+1)."""
    pairs = [sample_path(c, n_steps, seed, i) for c, i in zip(cfgs, indices)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# -- documentation figure -----------------------------------------------------------------
def plot_examples(path: str, n_steps: int = 200, seed: int = 0, per_family: int = 3) -> None:
    """Write a PNG with example paths of every family (strain components vs time)."""
    plt = pyplot()

    labels = ["11", "22", "33", "√2·23", "√2·13", "√2·12"]
    fig, axes = plt.subplots(len(SYNTHETIC), per_family, figsize=(3.2 * per_family, 2.3 * len(SYNTHETIC)),
                             squeeze=False)
    for r, (name, cls) in enumerate((n, FAMILIES[n]) for n in SYNTHETIC):
        for c in range(per_family):
            strain, time = sample_path(cls(), n_steps, seed, c)
            ax = axes[r, c]
            for k in range(6):
                ax.plot(time, 100 * strain[:, k], lw=0.9, label=labels[k])
            ax.set_title(f"{name} #{c}", fontsize=8)
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel("strain [%]", fontsize=7)
            if r == len(SYNTHETIC) - 1:
                ax.set_xlabel("time [s]", fontsize=7)
    axes[0, -1].legend(fontsize=5, ncol=2, loc="best")
    fig.suptitle("fe2nn strain-path families (Mandel components, default configs)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


if __name__ == "__main__":  # python -m fe2nn.data.paths docs/paths.png
    import sys

    plot_examples(sys.argv[1] if len(sys.argv) > 1 else "docs/paths.png")
