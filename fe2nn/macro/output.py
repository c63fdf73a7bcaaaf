"""Results of a macro run: VTX fields (ParaView), steps.csv and a force-displacement plot.

Layout of the output directory::

    displacement.bp/   VTX (ADIOS2): displacement u [m]
    fields.bp/         VTX: cell-averaged stress [Pa] (3x3), von Mises stress [Pa],
                       equivalent plastic strain p [-] (when the material has it)
    steps.csv          one row per converged step
    force_displacement.png
    checkpoint/        with [output] checkpoint_every (fe2nn.macro.checkpoint), and the frames and
    checkpoint.history/  strains it appended there; both removed at the end

The .bp directories are written into a hidden temporary directory and moved into
place when the run ends; the CSV and PNG are replaced atomically.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import List

import numpy as np
import ufl
from dolfinx import fem, la

from fe2nn.io_utils import atomic_path, pyplot, save_figure
from fe2nn.macro.checkpoint import Growing
from fe2nn.macro.quadrature import mandel_to_tensor

CSV_COLUMNS = ["step", "time", "load_factor", "u_x", "u_y", "u_z", "reaction_x", "reaction_y", "reaction_z",
               "iterations", "residual", "wall_time"]


class CellAverages:
    """Cell averages (exact L2 projection onto DG0) of quadrature fields: stress, von Mises, p."""

    def __init__(self, solver):
        qf = solver.qf
        mesh = qf.mesh
        self.solver = solver
        self.T = fem.functionspace(mesh, ("DG", 0, (3, 3)))
        self.S = fem.functionspace(mesh, ("DG", 0))
        self.stress = fem.Function(self.T, name="stress")
        self.von_mises = fem.Function(self.S, name="von_mises")
        tau, w = ufl.TestFunction(self.T), ufl.TestFunction(self.S)
        self._L_sig = fem.form(ufl.inner(mandel_to_tensor(qf.stress), tau) * qf.dx)
        one = fem.Constant(mesh, np.float64(1.0))
        self._vol = self._assemble(fem.form(one * w * qf.dx))
        self.has_p = "p" in solver.state
        if self.has_p:
            self.p_q = fem.Function(qf.space(()))
            self.p = fem.Function(self.S, name="p")
            self._L_p = fem.form(self.p_q * w * qf.dx)
        # scalar per-point material diagnostics (material.point_info, e.g. the surrogate's "ood"
        # mask): cell averages of the point values (for "ood": the fraction of points outside)
        from fe2nn.fe2 import point_info_names

        self.info_names = point_info_names(solver.material)
        self.info_q = {n: fem.Function(qf.space(())) for n in self.info_names}
        self.info = {n: fem.Function(self.S, name=n) for n in self.info_names}
        self._L_info = {n: fem.form(self.info_q[n] * w * qf.dx) for n in self.info_names}

    @staticmethod
    def _assemble(form) -> np.ndarray:
        vec = fem.assemble_vector(form)
        vec.scatter_reverse(la.InsertMode.add)
        vec.scatter_forward()
        return vec.array.copy()

    def update(self) -> None:
        vol = self._vol
        sig = self._assemble(self._L_sig).reshape(-1, 9) / vol[:, None]
        self.stress.x.array[:] = sig.reshape(-1)
        s = sig.reshape(-1, 3, 3)
        dev = s - np.trace(s, axis1=1, axis2=2)[:, None, None] * np.eye(3) / 3.0
        self.von_mises.x.array[:] = np.sqrt(1.5 * np.einsum("nij,nij->n", dev, dev))
        if self.has_p:
            p = self.solver.state["p"].detach().cpu().numpy()
            self.solver.qf.assign(self.p_q, p)
            self.p.x.array[:] = self._assemble(self._L_p) / vol
        if self.info_names:
            from fe2nn.fe2 import point_info_values

            qf = self.solver.qf
            for n in self.info_names:
                qf.assign(self.info_q[n], point_info_values(self.solver.material, qf.n_points, n))
                self.info[n].x.array[:] = self._assemble(self._L_info[n]) / vol

    @property
    def functions(self):
        return [self.stress, self.von_mises] + ([self.p] if self.has_p else []) + list(self.info.values())


class OutputWriter:
    """Writes one output directory of a macro run (collective over the solver's communicator)."""

    #: name of this part of a solve checkpoint (fe2nn.macro.checkpoint)
    checkpoint_name = "output"
    #: how the arrays of its checkpoint segments lie on a rank (axis 1; field<j>: the j-th field)
    checkpoint_kinds = {"u": "dofs", "field": "cells"}

    def __init__(self, directory, solver, vtx: bool = True, plot: bool = True, initial_frame: bool = True,
                 keep_frames: bool = False):
        """``initial_frame``: write the undeformed state as the first VTX frame; False for a run
        resumed from a checkpoint, which replays its frames instead and removes the unfinished VTX
        files of the interrupted run.  ``keep_frames``: keep the arrays of the frames written since
        the last checkpoint, for the next one (which appends them to its history)."""
        self.dir = Path(directory)
        self.solver, self.comm = solver, solver.comm
        self.plot = plot
        self.rows: List[list] = []
        self._rows = Growing()  # rows in checkpoint segments
        self.extra_columns: List[str] = []  # "<name>_points" per material.point_info entry
        tmp = None
        if self.comm.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not initial_frame:  # resumed: the interrupted run's unfinished VTX files
                for stale in self.dir.glob(".vtx.tmp*"):
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = str(self.dir / f".vtx.tmp{os.getpid()}")
            Path(tmp).mkdir()
        self.tmp = Path(self.comm.bcast(tmp, root=0))
        self.writers = []
        self.cells = None
        self.keep_frames = keep_frames
        self.frames: List[tuple] = []  # (t, u, [cell function arrays]) per frame since the last checkpoint
        if vtx:
            from dolfinx.io import VTXWriter

            self.cells = CellAverages(solver)
            self.writers = [
                ("displacement.bp", VTXWriter(self.comm, self.tmp / "displacement.bp", [solver.u], engine="BP4")),
                ("fields.bp", VTXWriter(self.comm, self.tmp / "fields.bp", self.cells.functions, engine="BP4")),
            ]
            if initial_frame:
                self._write_fields(0.0)

    def _write_fields(self, t: float) -> None:
        self.cells.update()
        for _, w in self.writers:
            w.write(t)
        if self.keep_frames:
            self.frames.append((t, self.solver.u.x.array.copy(), [f.x.array.copy() for f in self.cells.functions]))

    # -- checkpoints (fe2nn.macro.checkpoint) ---------------------------------------------------
    def checkpoint_meta(self) -> dict:
        return {"extra_columns": self.extra_columns}

    def checkpoint_segment(self) -> dict:
        """The steps.csv rows and the frames (this rank's dofs and cells) written since the last
        checkpoint."""
        out: dict = {}
        new = self._rows.new(len(self.rows))
        if new is not None:
            out["rows"] = [[x.item() if hasattr(x, "item") else x for x in r] for r in self.rows[new]]
        if self.frames:
            out.update(times=np.array([f[0] for f in self.frames]), u=np.stack([f[1] for f in self.frames]))
            for j in range(len(self.frames[0][2])):
                out[f"field{j}"] = np.stack([f[2][j] for f in self.frames])
        return out

    def segment_written(self) -> None:
        self._rows.written()
        self.frames.clear()

    def restore_checkpoint(self, meta: dict, solver=None) -> None:
        """Take the columns of the checkpoint's steps (its rows and frames follow, segment by segment)."""
        self.rows = []
        self.extra_columns = list(meta["extra_columns"])

    def restore_segment(self, segment: dict) -> None:
        """Take a segment's rows, and write its frames again (into this run's VTX files, which then
        hold every frame of the whole run)."""
        self.rows += [list(r) for r in segment.get("rows", [])]
        self._rows.restored(len(self.rows))
        if not self.writers or "times" not in segment:
            return
        arrays = segment
        u = self.solver.u.x.array
        current = u.copy()
        funcs = self.cells.functions
        for f, t in enumerate(arrays["times"]):
            u[:] = arrays["u"][f]
            for j, fn in enumerate(funcs):
                fn.x.array[:] = arrays[f"field{j}"][f]
            for _, w in self.writers:
                w.write(float(t))
        u[:] = current

    def write_step(self, rec, fields: bool = True) -> None:
        from fe2nn.fe2 import point_info_counts

        counts = point_info_counts(self.solver.material, self.solver.qf.n_points, self.comm)  # collective
        self.extra_columns = [f"{n}_points" for n in counts]
        self.rows.append([rec.step, rec.time, rec.factor, *rec.displacement, *rec.reaction, rec.iterations,
                          rec.residuals[-1], rec.wall_time, *counts.values()])
        if fields and self.writers:
            self._write_fields(rec.time)
        self._write_csv()

    def _write_csv(self) -> None:
        if self.comm.rank != 0:
            return
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(CSV_COLUMNS + self.extra_columns)
        for r in self.rows:
            wr.writerow([r[0]] + [f"{x:.17g}" for x in r[1:9]] + [r[9], f"{r[10]:.6e}", f"{r[11]:.6f}"]
                        + [int(x) for x in r[12:]])
        with atomic_path(self.dir / "steps.csv") as tmp:
            tmp.write_text(buf.getvalue())

    def _write_plot(self) -> None:
        if not self.rows:
            return
        plt = pyplot()

        data = np.array([r[3:9] for r in self.rows], dtype=float)
        u, R = np.vstack([np.zeros(3), data[:, :3]]), np.vstack([np.zeros(3), data[:, 3:]])
        i = int(np.argmax(np.abs(R).max(axis=0)))
        axis = "xyz"[i]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(u[:, i], R[:, i], "o-", ms=3)
        ax.set_xlabel(f"mean displacement u_{axis} on '{self.solver.reaction_boundary}' [m]")
        ax.set_ylabel(f"reaction force R_{axis} [N]")
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3))
        fig.tight_layout()
        save_figure(fig, self.dir / "force_displacement.png", dpi=120)

    def discard(self) -> None:
        """Close without publishing anything (a resume that was refused); collective."""
        for _, w in self.writers:
            w.close()
        self.comm.barrier()
        if self.comm.rank == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.comm.barrier()

    def close(self, records=None) -> None:
        for _, w in self.writers:
            w.close()
        self.comm.barrier()
        if self.comm.rank == 0:
            for name, _ in self.writers:
                final = self.dir / name
                if final.exists():
                    shutil.rmtree(final)
                os.replace(self.tmp / name, final)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.plot and self.solver.reaction_boundary is not None:
                self._write_plot()
        self.comm.barrier()
