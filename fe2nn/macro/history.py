"""Strain histories at the quadrature points of a macro solve (``[output] strain_paths = true``).

After every converged step the Mandel strain at every owned quadrature point is appended to a
temporary file of the rank (not kept in memory: a long run on a large mesh records more than
fits); at the end rank 0 gathers them, a slab of steps at a time, and writes ``strain_paths.h5``:

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

from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import numpy as np

from fe2nn.io_utils import Spool
from fe2nn.macro.checkpoint import Growing

#: the output file name inside the output directory
FILE_NAME = "strain_paths.h5"


class StrainHistory:
    """Solve callback that records the strain at the owned quadrature points after every
    converged step; :meth:`write` gathers and writes them (collective).  Row 0 is the start
    time ``t0`` [s], where the solve starts from the undeformed state (u = 0, zero strain).
    ``spool_dir``: where the rank's temporary file goes (default: the system's temporary
    directory; the file has no name and disappears with the process)."""

    #: name of this part of a solve checkpoint (fe2nn.macro.checkpoint)
    checkpoint_name = "strain_history"
    #: how the arrays of its checkpoint segments lie on a rank (axis 1)
    checkpoint_kinds = {"strain": "points"}
    #: strain gathered on rank 0 at a time when writing [bytes]
    SLAB_BYTES = 1 << 24

    def __init__(self, t0: float = 0.0, spool_dir: Optional[str | Path] = None):
        self.t0 = float(t0)
        self.spool_dir = spool_dir
        self.comm = None
        self.times: List[float] = []  # [s] of each recorded row
        self.n_points = 0  # owned quadrature points of this rank
        self._spool: Optional[Spool] = None  # the rows, each (n_points, 6)
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
        self.n_points = qf.n_points
        if self._spool is not None:
            self._spool.close()
        self._spool = Spool((self.n_points, 6), "fe2nn-strain-paths-", self.spool_dir)
        self.times = []

    def __call__(self, solver, rec) -> None:
        """Record the committed step ``rec`` (a :class:`~fe2nn.macro.solver.StepRecord`)."""
        if self.comm is None:
            self._setup(solver)
            self.times.append(self.t0)
            self._spool.append(np.zeros((self.n_points, 6)))
        self.times.append(float(rec.time))
        self._spool.append(solver.qf.strain())

    def checkpoint_meta(self) -> dict:
        return {"started": self.comm is not None}

    def checkpoint_segment(self) -> dict:
        """The times (new rows,) [s] and strains (new rows, n_local, 6) recorded since the last
        checkpoint."""
        new = self._saved.new(len(self.times))
        if new is None:
            return {}
        return {"time": np.asarray(self.times[new], dtype=np.float64), "strain": self._spool.read(new.start, new.stop)}

    def segment_written(self) -> None:
        self._saved.written()

    def restore_checkpoint(self, meta: dict, solver) -> None:
        """Start recording as at the checkpoint (the rows follow, segment by segment)."""
        if meta["started"]:
            self._setup(solver)

    def restore_segment(self, segment: dict) -> None:
        self.times.extend(float(t) for t in segment["time"])
        self._spool.append(segment["strain"])
        self._saved.restored(len(self.times))

    def write(self, path: str | Path, attrs: dict | None = None) -> None:
        """Gather to rank 0 and write ``path`` (HDF5, atomically); collective.  Nothing is
        written when no step converged.  Rank 0 holds the strains of all points for a slab of
        at most :attr:`SLAB_BYTES` at a time."""
        if self.comm is None:
            return
        from fe2nn.io_utils import atomic_path

        comm, root = self.comm, self.comm.rank == 0
        places = comm.gather((self.cell, self.point, self.x), root=0)
        counts = [p[0].size for p in places] if root else None  # points per rank
        n_total, n_rows = comm.allreduce(self.n_points), len(self.times)
        slab = max(1, min(n_rows, self.SLAB_BYTES // max(1, 48 * n_total)))
        failed: Optional[BaseException] = None  # on rank 0, raised after the collective part
        fh = None
        with atomic_path(path) if root else nullcontext() as tmp:
            if root:
                try:
                    import h5py

                    cell, point, x = (np.concatenate([p[i] for p in places]) for i in range(3))
                    order = np.lexsort((point, cell))
                    row = np.empty_like(order)  # the file's row of each gathered point
                    row[order] = np.arange(order.size)
                    rows = np.split(row, np.cumsum(counts)[:-1])
                    fh = h5py.File(tmp, "w")
                    strain = fh.create_dataset("strain", (n_total, n_rows, 6), dtype=np.float64,
                                               chunks=(max(1, min(n_total, (1 << 20) // (48 * slab))), slab, 6)
                                               if n_total and n_rows else None)
                except Exception as err:  # noqa: BLE001
                    failed = err
            for start in range(0, n_rows, slab):  # every rank takes part, also after a failure on rank 0
                stop = min(n_rows, start + slab)
                local = self._spool.read(start, stop)  # (steps, n_points, 6)
                recv = np.empty(n_total * (stop - start) * 6) if root else None
                comm.Gatherv(local, [recv, [c * (stop - start) * 6 for c in counts]] if root else None, root=0)
                del local
                if root and failed is None:
                    try:
                        block = np.empty((n_total, stop - start, 6))
                        offset = 0
                        for where, count in zip(rows, counts):
                            size = count * (stop - start) * 6
                            block[where] = recv[offset:offset + size].reshape(stop - start, count, 6).transpose(1, 0, 2)
                            offset += size
                        del recv
                        strain[:, start:stop] = block
                        del block
                    except Exception as err:  # noqa: BLE001
                        failed = err
            if root:
                try:
                    if failed is not None:
                        raise failed
                    fh["time"] = np.asarray(self.times, dtype=np.float64)
                    fh["x"] = x[order]
                    fh["cell"] = cell[order]
                    fh["point"] = point[order]
                    fh.attrs["units"] = "strain [-], time [s], x [m]"
                    fh.attrs["notation"] = "Mandel: (e11, e22, e33, sqrt2 e23, sqrt2 e13, sqrt2 e12)"
                    for k, v in (attrs or {}).items():
                        fh.attrs[k] = v
                finally:
                    if fh is not None:
                        fh.close()
