"""Checkpoints of a macro solve, to resume a long run (true FE², cluster wall-time limits).

``[output] checkpoint_every = N`` writes ``<output dir>/checkpoint/`` after every N-th converged
step; ``fe2nn solve CONFIG --resume`` continues from it and ends with the same results (steps.csv,
VTX frames, strain paths, out-of-distribution counts) as a run that was never interrupted.
A run that finishes removes its checkpoint, so a checkpoint on disk always means an unfinished run.

Layout::

    checkpoint/meta.json        step, time, the solve loop's position and step size, the config
                                and mesh it belongs to (fingerprint), the number of ranks, how many
                                bytes of each rank's history file it covers
    checkpoint/rank<r>.npz      rank r's arrays: committed displacement and last increment,
                                material state at its quadrature points (e.g. the surrogate's
                                internal variables, an RVE's per-voxel state)
    checkpoint.history/<run>.rank<r>.npys
                                rank r's history: first where its entries lie in the mesh (written
                                once), then, appended at each checkpoint, what the run added since
                                the previous one (the step records and steps.csv rows, the output
                                frames, the recorded strains, the out-of-distribution counts);
                                <run> is drawn at the run's first checkpoint and kept on resume

``checkpoint/`` is replaced as a whole (written as ``.checkpoint.tmp``, then renamed).  The history
files only grow: bytes beyond what the published ``meta.json`` covers (a checkpoint that failed
half-way) are cut off before the next append and ignored on resume.  A new run in the same
directory writes history files of its own <run>, so the checkpoint that it will replace stays
valid until it is replaced.  Each checkpoint thus writes the state plus what the last
``checkpoint_every`` steps added, and neither ``checkpoint/`` nor what is appended grows with the
number of steps; the run keeps only the frames since the last checkpoint in memory.

Arrays are stored per rank; where each rank's entries lie in the mesh (original cell indices, the
cells' displacement nodes and DG0 dofs; :class:`Partition`) opens its history file, since it does
not change during a run.  A run resumed on the same number
of ranks with the same partition reads its own files; on another number of ranks (or partition)
every rank reads the rows of its cells from the files of the old ranks that held them (their
layouts tell which), and the history is moved into new history
files of the resumed run (its results then agree with an uninterrupted run to round-off, as runs
on different numbers of ranks do).  The fingerprint covers the whole config except
``[output] dir``/``checkpoint_every`` and ``[solver]`` (so a failed run can be resumed with,
e.g., a smaller ``min_dt`` or more Newton iterations) and the mesh file's contents.
Everything a resumed step depends on is restored bit for bit; npz files are read without
pickle.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from fe2nn.errors import UserError

FORMAT = "fe2nn-solve-checkpoint"
VERSION = 4
DIR_NAME = "checkpoint"
HISTORY_NAME = "checkpoint.history"
RECORDS = "solver/records"  # the history segments of the step records
LAYOUT = "solver/layout"  # the first segment of a history file: the rank's Partition


def _differences(old: dict, new: dict, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


def _record_to_json(rec) -> dict:
    d = asdict(rec)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def _record_from_json(d: dict):
    from fe2nn.macro.solver import StepRecord

    d = dict(d)
    d["displacement"], d["reaction"] = np.asarray(d["displacement"]), np.asarray(d["reaction"])
    return StepRecord(**d)


class Growing:
    """Which entries of a part's growing list (step records, frames, strains) are in published
    checkpoint segments: :meth:`new` gives the entries for the segment being written,
    :meth:`written` marks them saved once it is published, :meth:`restored` after a resume."""

    def __init__(self) -> None:
        self.saved = 0  # entries in published segments
        self._pending = 0  # entries once the segment being written is published

    def new(self, n: int) -> Optional[slice]:
        """The entries [saved, n) of a list now ``n`` long; None when there are none."""
        self._pending = n
        return slice(self.saved, n) if n > self.saved else None

    def written(self) -> None:
        self.saved = self._pending

    def restored(self, n: int) -> None:
        self.saved = self._pending = n


#: how the entries of a checkpoint array lie on a rank, so that they can move to another partition:
#: "dofs": the displacement's local dofs (node by node, ghosts included); "cells": a DG0 function's
#: local cells (ghosts included); "points": the quadrature points of the owned cells, cell by cell.
#: Everything else in a checkpoint is the same on every rank.
KINDS = ("dofs", "cells", "points")


class Partition:
    """One rank's part of the mesh, as a checkpoint needs it to move arrays to another partition:
    each array of a kind in :data:`KINDS` becomes rows keyed by original cell index (one row per
    cell: its points, its nodes' dofs, or its DG0 value) and goes back to local entries on the new
    partition.  Lagrange degree 1 and 2 only: their cell-local dof order follows the cell's input
    nodes, whatever the partition (checked: a node takes the same value from every cell)."""

    def __init__(self, owned: np.ndarray, local: np.ndarray, nodes: np.ndarray, n_nodes: int,
                 dg0: np.ndarray, n_dg0: int, ppc: int):
        self.owned = owned  # (n_owned,) original indices of the owned cells, in local order
        self.local = local  # (n_local,) of all local cells (owned, then ghosts)
        self.nodes = nodes  # (n_local, nodes per cell) the displacement's local nodes of each cell
        self.n_nodes = n_nodes  # local displacement nodes (ghosts included)
        self.dg0 = dg0  # (n_local,) the local DG0 node of each cell
        self.n_dg0 = n_dg0
        self.ppc = ppc  # quadrature points per cell
        self.mine: Optional[np.ndarray] = None  # (n_owned,) an old partition's cells that a new rank holds

    @classmethod
    def of(cls, solver) -> "Partition":
        from dolfinx import fem

        mesh = solver.qf.mesh
        tdim = mesh.topology.dim
        cmap = mesh.topology.index_map(tdim)
        n_owned, n_local = cmap.size_local, cmap.size_local + cmap.num_ghosts
        original = np.asarray(mesh.topology.original_cell_index, dtype=np.int64)
        V = solver.u.function_space
        S = fem.functionspace(mesh, ("DG", 0))
        return cls(original[:n_owned].copy(), original[:n_local].copy(),
                   np.asarray(V.dofmap.list[:n_local], dtype=np.int32),
                   V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts,
                   np.asarray(S.dofmap.list[:n_local, 0], dtype=np.int32),
                   S.dofmap.index_map.size_local + S.dofmap.index_map.num_ghosts, solver.qf.points_per_cell)

    def arrays(self) -> Dict[str, np.ndarray]:
        """For the history file's first segment (under ``layout/``)."""
        return {"layout/owned": self.owned, "layout/local": self.local, "layout/nodes": self.nodes,
                "layout/dg0": self.dg0,
                "layout/sizes": np.array([self.n_nodes, self.n_dg0, self.ppc], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, z) -> "Partition":
        n_nodes, n_dg0, ppc = (int(x) for x in z["layout/sizes"])
        return cls(z["layout/owned"], z["layout/local"], z["layout/nodes"], n_nodes, z["layout/dg0"], n_dg0, ppc)

    def rows(self, kind: str, a: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """One row per owned cell (in the order of ``owned``; only those where ``mask``, (n_owned,)
        bool, is set) of a local array with its entries on axis 0."""
        n = self.owned.size
        pick = slice(None) if mask is None else mask
        if kind == "points":
            return a.reshape(n, self.ppc, *a.shape[1:])[pick]
        if kind == "dofs":
            return a.reshape(self.n_nodes, -1, *a.shape[1:])[self.nodes[:n][pick]]
        if kind == "cells":
            return a.reshape(self.n_dg0, -1, *a.shape[1:])[self.dg0[:n][pick]]
        raise ValueError(f"unknown kind {kind!r}")

    def place(self, kind: str, ids: np.ndarray, rows: np.ndarray, where: str) -> np.ndarray:
        """The local array (entries on axis 0) of this partition from ``rows`` keyed by original
        cell index ``ids`` (every cell of the mesh once)."""
        order = np.argsort(ids, kind="stable")

        def pick(cells):
            if ids.size == 0:
                found = np.zeros(0, dtype=np.int64)
            else:
                found = order[np.minimum(np.searchsorted(ids, cells, sorter=order), ids.size - 1)]
            if not np.array_equal(ids[found], cells):
                raise UserError(f"{where}: holds other cells than this mesh (another mesh file?)")
            return rows[found]

        if kind == "points":
            r = pick(self.owned)
            return r.reshape(-1, *r.shape[2:])
        index, size = (self.nodes, self.n_nodes) if kind == "dofs" else (self.dg0[:, None], self.n_dg0)
        r = pick(self.local)
        r = r.reshape(r.shape[0], index.shape[1], *r.shape[1 + (kind == "dofs"):])
        out = np.zeros((size,) + r.shape[2:], dtype=r.dtype)
        out[index] = r
        covered = np.zeros(size, dtype=bool)
        covered[index] = True
        if not covered.all() or not np.array_equal(out[index], r, equal_nan=r.dtype.kind in "fc"):
            raise UserError(f"{where}: the {kind} of the checkpoint do not fit this mesh's cells "
                            f"(another mesh file, or a displacement degree other than 1 or 2?)")
        return out.reshape(-1, *out.shape[2:])


class Checkpoint:
    """Writes and reads the checkpoint of one solve (collective over ``comm``).

    ``directory``: the run's output directory; ``every``: steps between checkpoints (0: never
    write); ``fingerprint``: JSON-able description of what the run computes (see module doc).
    Parts of the run that keep history of their own (the output writer, solve callbacks) take
    part when they have ``checkpoint_name``, ``checkpoint_meta()`` (JSON, rank 0's is kept) and
    ``restore_checkpoint(meta, solver)``.
    A part whose history grows step by step also has ``checkpoint_segment()`` (what it added on
    this rank since the last segment written: numpy arrays and JSON values by name; an empty dict:
    nothing), ``segment_written()`` (that segment is in a published checkpoint) and
    ``restore_segment(segment)`` (called once per segment, in order, after ``restore_checkpoint``;
    the same names and values; a segment's arrays are stacked over its steps on axis 0, and the
    part's ``checkpoint_kinds`` maps the names of those whose axis 1 runs over a rank's dofs, cells
    or points to their kind in :data:`KINDS`, so that they can move to another partition; a name
    ending in digits falls back to its stem).  The step records are a segment of the checkpoint's own, so
    ``meta.json`` keeps the same size however long the run.
    """

    def __init__(self, directory: str | os.PathLike, every: int, fingerprint: dict, comm):
        if every < 0:
            raise ValueError(f"checkpoint every must be >= 0 steps, got {every}")
        self.root = Path(directory)
        self.dir = self.root / DIR_NAME
        self.every = int(every)
        self.fingerprint = fingerprint
        self.comm = comm
        self.history = self.root / HISTORY_NAME
        self.last_step = 0  # step of the last checkpoint written or resumed from (0: none)
        self.resumed_step = 0  # step this run resumed after (0: it started from the beginning)
        self._history_bytes = 0  # length of this rank's history file that the last checkpoint covers
        self._history_run = ""  # <run> of the history file names ("": none drawn yet)
        self._records = Growing()  # step records in the history
        self._layout: Optional[Partition] = None  # this rank's part of the mesh
        self.moved_from: Optional[int] = None  # ranks of a resumed checkpoint of another partition

    # -- writing ---------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, solver, records: list, loop: dict, parts: list) -> None:
        """Write the checkpoint after a converged step (collective).  A write that fails on any
        rank (disk full, quota) keeps the previous checkpoint and prints one warning line; the
        run goes on."""
        comm, rank = self.comm, self.comm.rank
        tmp = self.root / f".{DIR_NAME}.tmp"
        arrays = self._solver_arrays(solver)  # every rank gathers its part (collective-free)
        if self._layout is None:
            self._layout = Partition.of(solver)
        metas = {part.checkpoint_name: part.checkpoint_meta() for part in parts}
        growing = [part for part in parts if hasattr(part, "checkpoint_segment")]
        segments = [(part.checkpoint_name, part.checkpoint_segment()) for part in growing]
        new = self._records.new(len(records))
        if new is not None:
            segments.insert(0, (RECORDS, {"records": [_record_to_json(r) for r in records[new]]}))
        if self._history_bytes == 0:  # a new history file (this run's first checkpoint) opens with the layout
            segments.insert(0, (LAYOUT, self._layout.arrays()))
        length: List[int] = []

        def attempt(action) -> Optional[str]:
            try:
                action()
                return None
            except OSError as err:
                return f"{type(err).__name__}: {err}"

        if not self._history_run:  # this run's first checkpoint: its own history files
            import uuid

            self._history_run = comm.bcast(uuid.uuid4().hex[:12] if rank == 0 else None, root=0)

        def prepare():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.history.mkdir(exist_ok=True)

        def write():
            np.savez(tmp / f"rank{rank}.npz", **arrays)
            length.append(self._append_history(segments))

        errors = comm.allgather(attempt(prepare) if rank == 0 else None)
        if not any(errors):
            errors = comm.allgather(attempt(write))
        if not any(errors):
            history_bytes = comm.allgather(length[0])
            meta = {"format": FORMAT, "version": VERSION, "n_ranks": comm.size,
                    "fingerprint": self.fingerprint, "step": len(records),
                    "time": records[-1].time if records else None, "loop": loop,
                    "solver": {"factor": solver.factor, "committed_factor": solver._committed_factor,
                               "increment_factor": None if solver._increment is None else solver._increment[1]},
                    "parts": metas,
                    "history": {"run": self._history_run, "bytes": history_bytes}}

            def publish():
                (tmp / "meta.json").write_text(json.dumps(meta))
                old = self.root / f".{DIR_NAME}.old"
                shutil.rmtree(old, ignore_errors=True)
                if self.dir.exists():
                    os.replace(self.dir, old)
                os.replace(tmp, self.dir)
                shutil.rmtree(old, ignore_errors=True)
                for stale in self.history.glob("*.npys"):  # an earlier run's, whose checkpoint this replaced
                    if not stale.name.startswith(f"{self._history_run}."):
                        stale.unlink()

            errors = comm.allgather(attempt(publish) if rank == 0 else None)
        failed = next((e for e in errors if e), None)
        if failed is None:
            self.last_step = len(records)
            self._history_bytes = length[0]
            self._records.written()
            for part in growing:
                part.segment_written()
            return
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"WARNING: checkpoint of step {len(records)} not written ({failed}); "
                  + (f"the checkpoint of step {self.last_step} stays" if self.last_step else "no checkpoint yet"),
                  flush=True)

    def _history_file(self, rank: Optional[int] = None) -> Path:
        """This run's history file of ``rank`` (default: this rank)."""
        return self.history / f"{self._history_run}.rank{self.comm.rank if rank is None else rank}.npys"

    def _append_history(self, segments: list) -> int:
        """Append the parts' new segments to this rank's history file, after cutting it back to
        what the last published checkpoint covers; returns the file's new length [bytes].
        Each segment is a header (JSON as uint8: part name, array names, the JSON values) and then
        its arrays, all in .npy format."""
        with open(self._history_file(), "r+b" if self._history_bytes else "wb") as fh:
            fh.truncate(self._history_bytes)
            fh.seek(self._history_bytes)
            for name, segment in segments:
                if segment:
                    _write_segment(fh, name, segment)
            fh.flush()
            os.fsync(fh.fileno())
            return fh.tell()

    @staticmethod
    def _read_history(path: Path, n_bytes: int):
        """Yield (part name, segment) for each segment in the first ``n_bytes`` of the history file
        ``path`` (one segment in memory at a time; its arrays and JSON values by name)."""
        if n_bytes == 0:
            return
        try:
            with open(path, "rb") as fh:
                while fh.tell() < n_bytes:
                    header = json.loads(np.lib.format.read_array(fh, allow_pickle=False).tobytes())
                    segment = dict(header["data"])
                    segment.update((k, np.lib.format.read_array(fh, allow_pickle=False)) for k in header["arrays"])
                    if fh.tell() > n_bytes:
                        raise ValueError(f"a segment runs past the {n_bytes} bytes the checkpoint covers")
                    yield header["part"], segment
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: unreadable checkpoint history ({err})") from None

    @staticmethod
    def _solver_arrays(solver) -> Dict[str, np.ndarray]:
        out = {"solver/u": solver.u_committed.copy()}
        if solver._increment is not None:
            out["solver/du"] = np.asarray(solver._increment[0])
        for key, value in solver.state.items():
            out[f"state/{key}"] = value.detach().cpu().numpy()
        return out

    def remove(self) -> None:
        """Delete the checkpoint (the run finished); collective."""
        self.comm.barrier()
        if self.comm.rank == 0:
            for d in (self.dir, self.root / f".{DIR_NAME}.tmp", self.root / f".{DIR_NAME}.old", self.history):
                shutil.rmtree(d, ignore_errors=True)
        self.comm.barrier()

    # -- reading ---------------------------------------------------------------------------
    def load(self) -> dict:
        """Read and check the checkpoint; returns its meta (with this rank's arrays under
        ``"arrays"`` when it was written on as many ranks as this run has).  Raises UserError (one
        line) when there is none or it does not fit this run."""
        where = self.dir
        if not (where / "meta.json").is_file():  # interrupted between the two renames of save()
            where = self.root / f".{DIR_NAME}.old"
        if not (where / "meta.json").is_file():
            raise UserError(f"{self.dir}: no checkpoint to resume from (a run writes one with "
                            f"[output] checkpoint_every = N; a finished run removes it)")
        try:
            meta = json.loads((where / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{where / 'meta.json'}: unreadable checkpoint ({err})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise UserError(f"{where / 'meta.json'}: not a {FORMAT} version {VERSION} file")
        diff = _differences(meta["fingerprint"], self.fingerprint)
        if diff:
            raise UserError(f"{where}: written for another problem; changed since: {', '.join(diff)} "
                            f"(only [output] dir/checkpoint_every and [solver] may change on resume)")
        try:
            n_old = int(meta["n_ranks"])
            self._history_run = str(meta["history"]["run"])
            need = [int(b) for b in meta["history"]["bytes"]]
            if len(need) != n_old:
                raise ValueError(f"history lengths of {len(need)} ranks, written by {n_old}")
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{where / 'meta.json'}: unreadable checkpoint ({type(err).__name__}: {err})") from None
        meta["where"] = str(where)
        if n_old == self.comm.size:
            try:
                with np.load(where / f"rank{self.comm.rank}.npz", allow_pickle=False) as z:
                    meta["arrays"] = {k: z[k] for k in z.files}
            except (OSError, ValueError) as err:
                raise UserError(f"{where}: unreadable rank file ({err})") from None
        ranks = [self.comm.rank] if n_old == self.comm.size else range(n_old)
        have = {r: self._history_file(r).stat().st_size if self._history_file(r).is_file() else 0 for r in ranks}
        short = [(r, have[r]) for r in ranks if have[r] < need[r]]
        if not self.comm.allreduce(not short, op=_land()):
            r, found = short[0] if short else (None, None)
            raise UserError(f"{self.history}: the checkpoint history is missing or shorter than the checkpoint "
                            f"in {where.name}/ needs"
                            + (f" ({need[r]} bytes of rank {r}'s file, found {found})" if short else "")
                            + "; it cannot be resumed")
        return meta

    def restore_solver(self, solver, meta: dict) -> None:
        """Put the checkpoint's displacement, last increment and material state into the solver
        (after checking the state's entries).  A checkpoint from another number of ranks or another
        partition of the mesh is moved onto this one (``moved_from``: its number of ranks)."""
        import torch

        arrays = meta.get("arrays")
        need = [int(b) for b in meta["history"]["bytes"]]
        self._layout = Partition.of(solver)
        same = False
        if arrays is not None:  # as many ranks as before (on all ranks alike): the same partition?
            old = self._together(self._old_layout, self.comm.rank, need)
            same = np.array_equal(self._layout.owned, old.owned) and arrays["solver/u"].shape == solver.u_committed.shape
        self.moved_from = None if self.comm.allreduce(same, op=_land()) else int(meta["n_ranks"])
        if self.moved_from is not None:
            arrays = self._moved_arrays(Path(meta["where"]), need)
        fresh = solver.material.initial_state(solver.qf.n_points)
        names = {k[len("state/"):] for k in arrays if k.startswith("state/")}
        if names != set(fresh):
            raise UserError(f"{self.dir}: material state entries {sorted(names)} do not match the "
                            f"material's {sorted(fresh)}")
        state = {}
        for key, ref in fresh.items():
            value = torch.from_numpy(arrays[f"state/{key}"].copy())
            if value.shape != ref.shape:
                raise UserError(f"{self.dir}: material state '{key}' has shape {tuple(value.shape)}, "
                                f"the material expects {tuple(ref.shape)}")
            state[key] = value.to(device=ref.device, dtype=ref.dtype)
        sv = meta["solver"]
        solver.u_committed[:] = arrays["solver/u"]
        solver.u.x.array[:] = solver.u_committed
        solver._increment = None if sv["increment_factor"] is None else (arrays["solver/du"].copy(),
                                                                         sv["increment_factor"])
        solver.factor, solver._committed_factor = sv["factor"], sv["committed_factor"]
        solver.state = solver.trial_state = state
        self.last_step = self.resumed_step = int(meta["step"])

    def _old_layout(self, rank: int, need: List[int]) -> Partition:
        """The partition of old rank ``rank``: the first segment of its history file (``need``: the
        bytes of each old rank's file that the checkpoint covers)."""
        path = self._history_file(rank)
        segments = self._read_history(path, need[rank])
        try:
            name, segment = next(segments, (None, None))
            if name != LAYOUT:
                raise UserError(f"{path}: does not start with the mesh partition; it cannot be resumed")
            return Partition.from_arrays(segment)
        except (KeyError, ValueError) as err:
            raise UserError(f"{path}: unreadable mesh partition ({type(err).__name__}: {err})") from None
        finally:
            segments.close()

    def _moved_arrays(self, where: Path, need: List[int]) -> Dict[str, np.ndarray]:
        """This rank's solver arrays from the rank files of a checkpoint of another partition: only
        the files of the old ranks that held cells of this rank are read (:attr:`_sources`)."""

        def read():
            olds = [self._old_layout(r, need) for r in range(len(need))]
            for old in olds:
                old.mine = np.isin(old.owned, self._layout.local)
            # (rank 0's when this rank has no cells, for the names and shapes of the arrays)
            self._sources = [r for r, old in enumerate(olds) if old.mine.any()] or [0]
            files = []
            for r in self._sources:
                old = olds[r]
                try:
                    with np.load(where / f"rank{r}.npz", allow_pickle=False) as z:
                        kind = {k: "dofs" if k in ("solver/u", "solver/du") else "points" for k in z.files
                                if k.startswith(("solver/", "state/"))}
                        files.append((old, {k: (kind[k], old.rows(kind[k], z[k], old.mine)) for k in kind}))
                except (OSError, ValueError, KeyError) as err:
                    raise UserError(f"{where}: unreadable rank file rank{r}.npz ({type(err).__name__}: {err})") from None
            return files

        files = self._together(read)
        self._old_layouts = [old for old, _ in files]
        self._old_cells = np.concatenate([old.owned[old.mine] for old in self._old_layouts])  # rows' cells
        return {key: self._move(kind, [rows[key][1] for _, rows in files], where, keyed=True)
                for key, (kind, _) in files[0][1].items()}

    def _move(self, kind: str, arrays: list, where, keyed: bool = False) -> np.ndarray:
        """The local array of this partition (entries on axis 0) from ``arrays``, one per source
        rank (:attr:`_sources`: its local array, or with ``keyed`` already its rows of the cells this
        rank holds); collective."""
        olds = self._old_layouts
        rows = np.concatenate([a if keyed else old.rows(kind, a, old.mine) for old, a in zip(olds, arrays)])
        return self._together(self._layout.place, kind, self._old_cells, rows, str(where))

    def restore_parts(self, solver, meta: dict, parts: list) -> list:
        """Give the output writer and the callbacks their history back: their meta, then their
        segments of the history, in the order written; returns the step records.  From a
        checkpoint of another partition, every segment is moved onto this one and written to new
        history files of this run (the old ones go with the old checkpoint)."""
        by_name = {}
        for part in parts:
            name = part.checkpoint_name
            if name not in meta["parts"]:
                raise UserError(f"{self.dir}: has no '{name}' (written without it)")
            part.restore_checkpoint(meta["parts"][name], solver)
            by_name[name] = part
        need = [int(b) for b in meta["history"]["bytes"]]
        if self.moved_from is None:
            segments = self._read_history(self._history_file(), need[self.comm.rank])
            self._history_bytes = need[self.comm.rank]
        else:
            segments = self._moved_history(need, by_name)
        records = []
        for name, segment in segments:
            if name == LAYOUT:
                continue
            if name == RECORDS:
                records += [_record_from_json(r) for r in segment["records"]]
            elif hasattr(by_name.get(name), "restore_segment"):
                by_name[name].restore_segment(segment)
            else:
                raise UserError(f"{self.history}: holds history of '{name}', which this run does not record")
        if len(records) != int(meta["step"]):
            raise UserError(f"{self.history}: holds {len(records)} step records, the checkpoint in "
                            f"{self.dir.name}/ is after step {meta['step']}; it cannot be resumed")
        self._records.restored(len(records))
        return records

    def _together(self, action, *args):
        """``action(*args)`` on every rank; a UserError on any rank is raised on all of them (so
        that none waits in a collective call for a rank that gave up)."""
        try:
            out, error = action(*args), None
        except UserError as err:
            out, error = None, str(err)
        errors = [e for e in self.comm.allgather(error) if e]
        if errors:
            raise UserError(errors[0])
        return out

    def _moved_history(self, need: List[int], by_name: dict):
        """Yield (part name, segment) of the old ranks' history files read side by side, each
        segment moved onto this partition and appended to this run's new history file."""
        import uuid

        # the sources' files, and rank 0's for what is the same on every rank
        self._readers = sorted({0, *self._sources})
        readers = [self._read_history(self._history_file(r), need[r]) for r in self._readers]
        self._history_run = self.comm.bcast(uuid.uuid4().hex[:12] if self.comm.rank == 0 else None, root=0)
        self.history.mkdir(exist_ok=True)
        try:
            yield from self._move_segments(readers, by_name)
        except BaseException:  # refused half-way: the old checkpoint and its history stay as they were
            self._history_file().unlink(missing_ok=True)
            raise

    def _move_segments(self, readers: list, by_name: dict):
        with open(self._history_file(), "wb") as out:
            _write_segment(out, LAYOUT, self._layout.arrays())  # this partition's
            for pieces in itertools.zip_longest(*readers):
                names = {p[0] if p else None for p in pieces}
                if len(names) != 1 or None in names:
                    raise UserError(f"{self.history}: the ranks' history files do not hold the same segments")
                name = pieces[0][0]
                if name == LAYOUT:
                    continue
                kinds = getattr(by_name.get(name), "checkpoint_kinds", {})
                segment = dict(pieces[0][1])  # what is the same on every rank: rank 0's
                sources = [piece for r, (_, piece) in zip(self._readers, pieces) if r in self._sources]
                for key, value in segment.items():
                    kind = kinds.get(key, kinds.get(key.rstrip("0123456789")))
                    if kind is None or not isinstance(value, np.ndarray):
                        continue
                    local = self._move(kind, [np.moveaxis(piece[key], 1, 0) for piece in sources], self.history)
                    segment[key] = np.moveaxis(local, 0, 1)
                _write_segment(out, name, segment)
                yield name, segment
            out.flush()
            os.fsync(out.fileno())
            self._history_bytes = out.tell()


def _write_segment(fh, name: str, segment: dict) -> None:
    """One segment: a header (JSON as uint8: part name, array names, the JSON values), then the
    arrays, all in .npy format."""
    data = {k: v for k, v in segment.items() if not isinstance(v, np.ndarray)}
    named = {k: v for k, v in segment.items() if isinstance(v, np.ndarray)}
    header = json.dumps({"part": name, "arrays": list(named), "data": data}).encode()
    np.lib.format.write_array(fh, np.frombuffer(header, dtype=np.uint8), allow_pickle=False)
    for value in named.values():
        np.lib.format.write_array(fh, np.ascontiguousarray(value), allow_pickle=False)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a solve checkpoint directory, or an output directory holding one."""
    path = Path(path)
    return (path / "meta.json").is_file() and (path / "rank0.npz").is_file() or (path / DIR_NAME / "meta.json").is_file()


def _skip_array(fh) -> tuple:
    """Read the header of the .npy array at the file position and move past its data; returns its
    shape."""
    major, _ = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    fh.seek(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, os.SEEK_CUR)
    return shape


#: what ``fe2nn inspect`` calls the entries of the history segments, by (part, name)
_HISTORY_LABELS = {(RECORDS, "records"): "step records", ("output", "rows"): "steps.csv rows",
                   ("output", "times"): "VTX frames", ("strain_history", "time"): "strain-path rows",
                   ("validate", "times"): "recorded stress fields", ("validate", "ood"): "out-of-distribution counts",
                   ("ood_monitor", "counts"): "out-of-distribution counts"}


def summarize(path: str | os.PathLike) -> dict:
    """What a checkpoint holds, for ``fe2nn inspect``: step, time, ranks, sizes, the material state,
    and per part what its history files hold (read from the segments' headers, without their
    arrays); whether it can be resumed (files present and long enough)."""
    path = Path(path)
    where = path if (path / "meta.json").is_file() else path / DIR_NAME
    try:
        meta = json.loads((where / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{where / 'meta.json'}: unreadable checkpoint ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{where / 'meta.json'}: not a {FORMAT} version {VERSION} file "
                        f"(version {meta.get('version')})")
    import zipfile

    n_ranks, run = int(meta["n_ranks"]), meta["history"]["run"]
    need = [int(b) for b in meta["history"]["bytes"]]
    with zipfile.ZipFile(where / "rank0.npz") as z:
        state = sorted(n[len("state/"):-len(".npy")] for n in z.namelist() if n.startswith("state/"))
    problems, counts = [], {}
    for r in range(n_ranks):
        rank_file = where / f"rank{r}.npz"
        if not rank_file.is_file():
            problems.append(f"{rank_file.name} missing")
        hist = where.parent / HISTORY_NAME / f"{run}.rank{r}.npys"
        have = hist.stat().st_size if hist.is_file() else 0
        if have < need[r]:
            problems.append(f"{hist.name}: {have} of {need[r]} bytes")
            continue
        if r:
            continue
        try:
            with open(hist, "rb") as fh:  # rank 0's segments: how many entries of each kind they hold
                while fh.tell() < need[0]:
                    header = json.loads(np.lib.format.read_array(fh, allow_pickle=False).tobytes())
                    found = {k: _skip_array(fh)[0] for k in header["arrays"]}
                    for k, v in header["data"].items():  # JSON lists, and the OOD counts of validate
                        v = v.get("counts") if isinstance(v, dict) else v
                        if isinstance(v, list):
                            found[k] = len(v)
                    for key, n in found.items():
                        label = _HISTORY_LABELS.get((header["part"], key))
                        if label:
                            counts[label] = counts.get(label, 0) + int(n)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            problems.append(f"{hist.name}: unreadable ({type(err).__name__}: {err})")
    sizes = {"state_bytes": sum(f.stat().st_size for f in where.glob("rank*.npz")),
             "history_bytes": sum(need)}
    cfg = meta["fingerprint"].get("config", {})
    return {"path": str(where), "step": int(meta["step"]), "time": meta["time"], "n_ranks": n_ranks,
            "material": cfg.get("material", {}).get("model"), "mesh": cfg.get("mesh", {}).get("file"),
            "state": state, "history": counts, **sizes, "resumable": not problems, "problems": problems}


def report(s: dict) -> str:
    """The text of ``fe2nn inspect CHECKPOINT``."""
    lines = [f"solve checkpoint {s['path']}",
             f"  after step {s['step']} (t = {s['time']:.6g} s), written on {s['n_ranks']} rank(s); "
             f"material {s['material']!r}, mesh {s['mesh']!r}",
             f"  state {s['state_bytes'] / 1e6:.2f} MB (material state: {', '.join(s['state']) or 'none'}), "
             f"history {s['history_bytes'] / 1e6:.2f} MB"]
    if s["history"]:
        lines.append("  history: " + ", ".join(f"{n} {label}" for label, n in s["history"].items()))
    lines.append("  resumable on any number of ranks: fe2nn solve CONFIG --resume" if s["resumable"] else
                 f"  NOT resumable: {'; '.join(s['problems'])}")
    return "\n".join(lines)


def _land():
    from mpi4py import MPI

    return MPI.LAND


def fingerprint(config: dict, mesh_file: str | os.PathLike) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint: the config without
    ``[output] dir``/``checkpoint_every`` and ``[solver]``, and the mesh file's SHA-256."""
    import hashlib

    cfg = json.loads(json.dumps(config, default=str))  # plain JSON types
    cfg.pop("solver", None)
    out = cfg.get("output", {})
    for key in ("dir", "checkpoint_every"):
        out.pop(key, None)
    h = hashlib.sha256()
    with open(mesh_file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"config": cfg, "mesh_sha256": h.hexdigest()}

