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
                                rank r's history, appended at each checkpoint: what the run added
                                since the previous one (the step records and steps.csv rows, the
                                output frames, the recorded strains, the out-of-distribution
                                counts); <run> is drawn at the run's first checkpoint and kept on
                                resume

``checkpoint/`` is replaced as a whole (written as ``.checkpoint.tmp``, then renamed).  The history
files only grow: bytes beyond what the published ``meta.json`` covers (a checkpoint that failed
half-way) are cut off before the next append and ignored on resume.  A new run in the same
directory writes history files of its own <run>, so the checkpoint that it will replace stays
valid until it is replaced.  Each checkpoint thus writes the state plus what the last
``checkpoint_every`` steps added, and neither ``checkpoint/`` nor what is appended grows with the
number of steps; the run keeps only the frames since the last checkpoint in memory.

Arrays are stored per rank, so a run resumes on the same number of ranks (mpirun -n N) with
the same mesh partition; both are checked.  The fingerprint covers the whole config except
``[output] dir``/``checkpoint_every`` and ``[solver]`` (so a failed run can be resumed with,
e.g., a smaller ``min_dt`` or more Newton iterations) and the mesh file's contents.
Everything a resumed step depends on is restored bit for bit; npz files are read without
pickle.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from fe2nn.errors import UserError

FORMAT = "fe2nn-solve-checkpoint"
VERSION = 3
DIR_NAME = "checkpoint"
HISTORY_NAME = "checkpoint.history"
RECORDS = "solver/records"  # the history segments of the step records


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
    the same names and values).  The step records are a segment of the checkpoint's own, so
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
        metas = {part.checkpoint_name: part.checkpoint_meta() for part in parts}
        growing = [part for part in parts if hasattr(part, "checkpoint_segment")]
        segments = [(part.checkpoint_name, part.checkpoint_segment()) for part in growing]
        new = self._records.new(len(records))
        if new is not None:
            segments.insert(0, (RECORDS, {"records": [_record_to_json(r) for r in records[new]]}))
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

    def _history_file(self) -> Path:
        return self.history / f"{self._history_run}.rank{self.comm.rank}.npys"

    def _append_history(self, segments: list) -> int:
        """Append the parts' new segments to this rank's history file, after cutting it back to
        what the last published checkpoint covers; returns the file's new length [bytes].
        Each segment is a header (JSON as uint8: part name, array names, the JSON values) and then
        its arrays, all in .npy format."""
        with open(self._history_file(), "r+b" if self._history_bytes else "wb") as fh:
            fh.truncate(self._history_bytes)
            fh.seek(self._history_bytes)
            for name, arrays in segments:
                if not arrays:
                    continue
                data = {k: v for k, v in arrays.items() if not isinstance(v, np.ndarray)}
                named = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
                header = json.dumps({"part": name, "arrays": list(named), "data": data}).encode()
                np.lib.format.write_array(fh, np.frombuffer(header, dtype=np.uint8), allow_pickle=False)
                for value in named.values():
                    np.lib.format.write_array(fh, np.ascontiguousarray(value), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
            return fh.tell()

    def _read_history(self, n_bytes: int):
        """Yield (part name, segment) for each segment in the first ``n_bytes`` of this rank's
        history file (one segment in memory at a time; its arrays and JSON values by name)."""
        path = self._history_file()
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
        mesh = solver.qf.mesh
        n_cells = mesh.topology.index_map(mesh.topology.dim).size_local
        out = {"solver/cells": np.asarray(mesh.topology.original_cell_index[:n_cells], dtype=np.int64),
               "solver/u": solver.u_committed.copy()}
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
        """Read and check the checkpoint; returns its meta with this rank's arrays under
        ``"arrays"``.  Raises UserError (one line) when there is none or it does not fit this run."""
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
        if meta["n_ranks"] != self.comm.size:
            raise UserError(f"{where}: written by {meta['n_ranks']} MPI rank(s); resume with the same number "
                            f"(mpirun -n {meta['n_ranks']}), this run has {self.comm.size}")
        diff = _differences(meta["fingerprint"], self.fingerprint)
        if diff:
            raise UserError(f"{where}: written for another problem; changed since: {', '.join(diff)} "
                            f"(only [output] dir/checkpoint_every and [solver] may change on resume)")
        try:
            with np.load(where / f"rank{self.comm.rank}.npz", allow_pickle=False) as z:
                meta["arrays"] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise UserError(f"{where}: unreadable rank file ({err})") from None
        try:
            self._history_run = str(meta["history"]["run"])
            need = int(meta["history"]["bytes"][self.comm.rank])
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise UserError(f"{where / 'meta.json'}: unreadable checkpoint ({type(err).__name__}: {err})") from None
        history = self._history_file()
        have = history.stat().st_size if history.is_file() else -1
        if not self.comm.allreduce(have >= need, op=_land()):
            raise UserError(f"{self.history}: the checkpoint history is missing or shorter than the checkpoint "
                            f"in {where.name}/ needs ({need} bytes on rank {self.comm.rank}, found "
                            f"{max(have, 0)}); it cannot be resumed")
        return meta

    def restore_solver(self, solver, meta: dict) -> None:
        """Put the checkpoint's displacement, last increment and material state into the solver
        (after checking the mesh partition and the state's entries)."""
        import torch

        arrays = meta["arrays"]
        mesh = solver.qf.mesh
        n_cells = mesh.topology.index_map(mesh.topology.dim).size_local
        cells = np.asarray(mesh.topology.original_cell_index[:n_cells], dtype=np.int64)
        same = np.array_equal(cells, arrays["solver/cells"]) and arrays["solver/u"].shape == solver.u_committed.shape
        if not self.comm.allreduce(same, op=_land()):
            raise UserError(f"{self.dir}: the mesh is partitioned differently from the run that wrote the "
                            f"checkpoint; resume with the same mesh file and number of ranks")
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
        self._history_bytes = int(meta["history"]["bytes"][self.comm.rank])

    def restore_parts(self, solver, meta: dict, parts: list) -> list:
        """Give the output writer and the callbacks their history back: their meta, then their
        segments of the history file, in the order written; returns the step records."""
        by_name = {}
        for part in parts:
            name = part.checkpoint_name
            if name not in meta["parts"]:
                raise UserError(f"{self.dir}: has no '{name}' (written without it)")
            part.restore_checkpoint(meta["parts"][name], solver)
            by_name[name] = part
        records = []
        for name, segment in self._read_history(int(meta["history"]["bytes"][self.comm.rank])):
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


def _land():
    from mpi4py import MPI

    return MPI.LAND


def fingerprint(config: dict, mesh_file: str | os.PathLike, n_ranks: int) -> dict:
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
    return {"config": cfg, "mesh_sha256": h.hexdigest(), "n_ranks": n_ranks}

