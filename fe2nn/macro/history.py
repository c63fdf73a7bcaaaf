"""Strain histories at the quadrature points of a macro solve (``[output] strain_paths = true``).

After every converged step the Mandel strain at every owned quadrature point is kept; at the
end rank 0 gathers them and writes ``strain_paths.h5``:

* ``strain`` (n_points, n_steps + 1, 6) [-], Mandel notation, row 0 the initial state;
* ``time`` (n_steps + 1,) [s];
* ``x`` (n_points, 3) [m], the quadrature points;
* ``cell`` (n_points,) the cell's index in the mesh file, ``point`` (n_points,) the quadrature
  point within the cell.

Points are ordered by (``cell``, ``point``), so the file is the same on any number of ranks.
These are the strain paths that the constitutive law saw in the structure: inspect them against
a surrogate's training envelope, or drive an RVE along them.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from fe2nn.macro.checkpoint import Growing

#: the output file name inside the output directory
FILE_NAME = "strain_paths.h5"


class StrainHistory:
    """Solve callback that records the strain at the owned quadrature points after every
    converged step; :meth:`write` gathers and writes them (collective).  Row 0 is the start
    time ``t0`` [s], where the solve starts from the undeformed state (u = 0, zero strain)."""

    #: name of this part of a solve checkpoint (fe2nn.macro.checkpoint)
    checkpoint_name = "strain_history"
    #: how the arrays of its checkpoint segments lie on a rank (axis 1)
    checkpoint_kinds = {"strain": "points"}

    def __init__(self, t0: float = 0.0):
        self.t0 = float(t0)
        self.comm = None
        self.times: List[float] = []
        self.strains: List[np.ndarray] = []
        self._saved = Growing()  # rows in checkpoint segments

    def _setup(self, solver) -> None:
        import ufl
        from dolfinx import fem

        qf, mesh = solver.qf, solver.qf.mesh
        self.comm = solver.comm
        ppc = qf.points_per_cell
        original = np.asarray(mesh.topology.original_cell_index, dtype=np.int64)[qf.cells]
        self.cell = np.repeat(original, ppc)
        self.point = np.tile(np.arange(ppc, dtype=np.int64), qf.cells.size)
        x = fem.Expression(ufl.SpatialCoordinate(mesh), qf.points).eval(mesh, qf.cells)
        self.x = np.asarray(x, dtype=np.float64).reshape(qf.n_points, 3)
        self.times = [self.t0]
        self.strains = [np.zeros((qf.n_points, 6))]

    def __call__(self, solver, rec) -> None:
        """Record the committed step ``rec`` (a :class:`~fe2nn.macro.solver.StepRecord`)."""
        if self.comm is None:
            self._setup(solver)
        self.times.append(float(rec.time))
        self.strains.append(solver.qf.strain().copy())

    def checkpoint_meta(self) -> dict:
        return {"started": self.comm is not None}

    def checkpoint_segment(self) -> dict:
        """The times (new rows,) [s] and strains (new rows, n_local, 6) recorded since the last
        checkpoint."""
        new = self._saved.new(len(self.strains))
        if new is None:
            return {}
        return {"time": np.asarray(self.times[new], dtype=np.float64), "strain": np.stack(self.strains[new])}

    def segment_written(self) -> None:
        self._saved.written()

    def restore_checkpoint(self, meta: dict, solver) -> None:
        """Start recording as at the checkpoint (the rows follow, segment by segment)."""
        if meta["started"]:
            self._setup(solver)
            self.times, self.strains = [], []

    def restore_segment(self, segment: dict) -> None:
        self.times.extend(float(t) for t in segment["time"])
        self.strains.extend(a.copy() for a in segment["strain"])
        self._saved.restored(len(self.strains))

    def write(self, path: str | Path, attrs: dict | None = None) -> None:
        """Gather to rank 0 and write ``path`` (HDF5, atomically); collective.  Nothing is
        written when no step converged."""
        if self.comm is None:
            return
        local = np.stack(self.strains, axis=1)  # (n_local, steps + 1, 6)
        parts = self.comm.gather((self.cell, self.point, self.x, local), root=0)
        if self.comm.rank != 0:
            return
        import h5py

        from fe2nn.io_utils import atomic_path

        cell, point, x, strain = (np.concatenate([p[i] for p in parts]) for i in range(4))
        order = np.lexsort((point, cell))
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as fh:
                fh["strain"] = strain[order]
                fh["time"] = np.asarray(self.times, dtype=np.float64)
                fh["x"] = x[order]
                fh["cell"] = cell[order]
                fh["point"] = point[order]
                fh.attrs["units"] = "strain [-], time [s], x [m]"
                fh.attrs["notation"] = "Mandel: (e11, e22, e33, sqrt2 e23, sqrt2 e13, sqrt2 e12)"
                for k, v in (attrs or {}).items():
                    fh.attrs[k] = v
