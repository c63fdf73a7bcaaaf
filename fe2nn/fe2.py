"""FE² helpers shared by the macro solver's output, ``fe2nn solve`` and ``fe2nn validate``.

* :func:`scalar_info` -- the scalar per-point diagnostics a material publishes in
  ``material.info`` after an update (e.g. the surrogate's out-of-distribution mask
  ``"ood"``, an RVE's ``"newton_iterations"``), as float arrays (n,).
* :class:`OODMonitor` -- a ``callback`` for :func:`fe2nn.macro.solver.solve` that
  counts, after every converged step, the quadrature points (all ranks) whose
  strain, strain rate or accumulated strain path length lies outside the surrogate's
  training envelope.
* :func:`point_weights` -- quadrature weight x |det J| of every owned quadrature point
  (the volume each point stands for), for integrals of point fields.
* :func:`share_threads`, :func:`keep_freed_memory` -- process settings for batched torch
  materials (torch threads per MPI rank; glibc keeping freed memory for the next update).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from fe2nn.macro.checkpoint import Growing

#: name of the out-of-distribution mask in ``material.info`` (see RNOMaterial)
OOD_KEY = "ood"
#: its causes, when the material publishes them: strain or strain rate outside the envelope, or
#: an accumulated strain path longer than any training path
OOD_CAUSES = {"strain": "ood_strain", "rate": "ood_rate", "path": "ood_path"}


def scalar_info(material, n: int) -> Dict[str, np.ndarray]:
    """Entries of ``material.info`` that are one number per point: name -> float64 array (n,).

    Call it right after the converged update of a step (the info of the last
    update is the converged state's).  Vector or per-grain entries are skipped.
    """
    out: Dict[str, np.ndarray] = {}
    for name, val in (getattr(material, "info", None) or {}).items():
        try:
            arr = val.detach().cpu().numpy() if hasattr(val, "detach") else np.asarray(val)
        except Exception:  # noqa: BLE001 - not array-like: not a point field
            continue
        if arr.shape == (n,) and arr.dtype.kind in "biuf":
            out[name] = arr.astype(np.float64)
    return out


class OODMonitor:
    """``solve(..., callback=OODMonitor())``: OOD points per converged step (all ranks)."""

    #: name of this part of a solve checkpoint (fe2nn.macro.checkpoint)
    checkpoint_name = "ood_monitor"

    def __init__(self) -> None:
        self.counts: List[int] = []
        self.by_cause: Dict[str, List[int]] = {c: [] for c in OOD_CAUSES}
        self.times: List[float] = []
        self.active = False
        self.n_points = 0
        self._saved = Growing()  # steps in checkpoint segments

    def __call__(self, solver, rec) -> None:
        counts = point_info_counts(solver.material, solver.qf.n_points, solver.comm)  # collective
        self.n_points = int(solver.comm.allreduce(solver.qf.n_points))
        self.active = self.active or OOD_KEY in counts
        self.counts.append(counts.get(OOD_KEY, 0))
        for cause, key in OOD_CAUSES.items():
            self.by_cause[cause].append(counts.get(key, 0))
        self.times.append(float(rec.time))

    def checkpoint_meta(self) -> Dict[str, object]:
        return {"active": self.active, "n_points": self.n_points}

    def checkpoint_segment(self) -> Dict[str, object]:
        """The counts of the steps since the last checkpoint (JSON lists)."""
        new = self._saved.new(len(self.counts))
        if new is None:
            return {}
        return {"counts": self.counts[new], "times": self.times[new],
                "by_cause": {c: v[new] for c, v in self.by_cause.items()}}

    def segment_written(self) -> None:
        self._saved.written()

    def restore_checkpoint(self, meta: Dict[str, object], solver=None) -> None:
        self.counts, self.times = [], []
        self.by_cause = {c: [] for c in OOD_CAUSES}
        self.active, self.n_points = bool(meta["active"]), int(meta["n_points"])

    def restore_segment(self, segment: Dict[str, object]) -> None:
        self.counts += [int(c) for c in segment["counts"]]
        self.times += [float(t) for t in segment["times"]]
        for cause in OOD_CAUSES:
            self.by_cause[cause] += [int(c) for c in segment["by_cause"][cause]]
        self._saved.restored(len(self.counts))

    def summary(self) -> Dict[str, object]:
        """JSON-able summary: monitored, steps with OOD points, maximum and total count."""
        c = np.asarray(self.counts, dtype=int)
        bad = np.flatnonzero(c > 0)
        return {"monitored": self.active, "n_points": self.n_points, "steps": int(c.size),
                "steps_with_ood": int(bad.size), "max_ood_points": int(c.max(initial=0)),
                "total_ood_point_steps": int(c.sum()),
                "first_ood_step": int(bad[0]) + 1 if bad.size else None, "per_step": c.tolist(),
                "max_by_cause": {k: max(v, default=0) for k, v in self.by_cause.items()}}

    def line(self) -> str:
        """One-line summary for the end of a run."""
        s = self.summary()
        if not s["monitored"]:
            return "out-of-distribution monitor: not applicable (material has no training envelope)"
        causes = s["max_by_cause"]
        if s["steps_with_ood"] == 0:
            return (f"out-of-distribution monitor: all {s['n_points']} quadrature points stayed inside the "
                    f"surrogate's training envelope in all {s['steps']} steps")
        return (f"out-of-distribution monitor: WARNING {s['steps_with_ood']} of {s['steps']} steps had points "
                f"outside the training envelope (at most {s['max_ood_points']} of {s['n_points']} points, "
                f"first at step {s['first_ood_step']}; at most {causes['strain']} by strain, {causes['rate']} by "
                f"strain rate, {causes['path']} by strain path length); the surrogate extrapolates there")


def point_weights(qf) -> np.ndarray:
    """Quadrature weight x |det J| of every owned point of ``qf`` (QuadratureFields), (n,) [m^3]."""
    import ufl
    from dolfinx import fem

    Q = qf.space(())
    vec = fem.assemble_vector(fem.form(ufl.TestFunction(Q) * qf.dx))
    w = fem.Function(Q)
    w.x.array[:] = vec.array
    return np.array(qf.view(w)).reshape(-1)


def point_info_names(material) -> tuple:
    """Names of the scalar per-point info entries a material asks the macro output to write
    (its ``point_info`` attribute, e.g. ("ood",) for the surrogate backend)."""
    return tuple(getattr(material, "point_info", ()) or ())


def point_info_values(material, n: int, name: str) -> np.ndarray:
    """Converged per-point values (n,) of info entry ``name`` (zeros when not published)."""
    return scalar_info(material, n).get(name, np.zeros(n))


def point_info_counts(material, n: int, comm) -> Dict[str, int]:
    """Per name in :func:`point_info_names`: points with a non-zero value, summed over ranks (collective)."""
    return {name: int(comm.allreduce(int(np.count_nonzero(point_info_values(material, n, name)))))
            for name in point_info_names(material)}


def share_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads: ``threads`` > 0 as given, 0 = the CPU cores of this node
    divided by the MPI ranks (at least 1), so that ``mpirun -n N`` does not oversubscribe the cores;
    with 0 and OMP_NUM_THREADS set, torch's setting is kept.  Returns the number in use."""
    import os

    import torch

    if threads <= 0 and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if threads <= 0:
        try:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            local = comm.Split_type(MPI.COMM_TYPE_SHARED).size
        except Exception:  # noqa: BLE001 - no MPI: one process
            local = 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // max(local, 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def keep_freed_memory() -> bool:
    """Let glibc keep freed heap memory for reuse instead of returning it to the OS at once.

    A batched material update allocates temporaries of tens of MB (e.g. the surrogate's
    forward-mode tangent: 6 x points x 128 floats per layer).  With glibc's defaults, freeing
    them trims the heap and the next update page-faults all of that memory in again, which
    costs about as much as the arithmetic (measured: surrogate stress + tangent at 4832 points
    ~35 % faster with this).  Sets M_MMAP_THRESHOLD = 32 MiB (the largest glibc allows), so
    such blocks come from the heap, and M_TRIM_THRESHOLD = 256 MiB / M_TOP_PAD = 16 MiB, so
    up to that much freed memory stays mapped; the process's resident memory stays near its
    peak.  Idempotent; does nothing (returns False) without glibc or with FE2NN_MALLOC=default.
    """
    import ctypes
    import ctypes.util
    import os

    global _MALLOC_TUNED
    if _MALLOC_TUNED is not None:
        return _MALLOC_TUNED
    _MALLOC_TUNED = False
    if os.environ.get("FE2NN_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    _MALLOC_TUNED = bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 256 << 20)
                         and mallopt(m_top_pad, 16 << 20))
    return _MALLOC_TUNED


_MALLOC_TUNED = None
