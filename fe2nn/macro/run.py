"""``fe2nn solve CONFIG.toml [--output DIR]``: run a macroscale simulation from a TOML config.

The whole config (keys, types, values, material parameters, mesh file and its
boundary names) is validated before anything is computed or written.  Works
under ``mpirun -n N``.  See fe2nn/macro/config.py for the schema.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from fe2nn.config import add_override_argument, load_toml, parse, resolve_path
from fe2nn.errors import SolverError, UserError
from fe2nn.interrupt import Interrupted
from fe2nn.macro.config import SolveConfig


#: the record of a run in its output directory (:func:`write_run_record`)
RUN_RECORD = "run.json"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fe2nn solve", description="Run a macroscale small-strain simulation "
                                 "(DOLFINx, MPI parallel) from a TOML config.")
    ap.add_argument("config", help="TOML config file (paths in it are relative to its directory)")
    ap.add_argument("--output", "-o", help="output directory (overrides [output].dir)")
    ap.add_argument("--quiet", "-q", action="store_true", help="no per-step progress lines")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from <output dir>/checkpoint/ (written with [output] "
                         "checkpoint_every = N), on any number of ranks")
    add_override_argument(ap)
    return ap


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> SolveConfig:
    """Parse and validate a solve config (no DOLFINx needed); ``overrides``: ``KEY=VALUE`` (``--set``)."""
    file = str(path)
    return parse(SolveConfig, load_toml(path, overrides), file)


def check_boundaries(cfg: SolveConfig, file: str, info) -> None:
    """Every boundary named in the config must be a surface physical group of the mesh."""
    from fe2nn.macro.problem import resolve_boundary

    refs = [(f"dirichlet[{i}].boundary", d.boundary) for i, d in enumerate(cfg.dirichlet)]
    refs += [(f"traction[{i}].boundary", t.boundary) for i, t in enumerate(cfg.traction)]
    if cfg.output.reaction is not None:
        refs.append(("output.reaction", cfg.output.reaction))
    for key, tag in refs:
        try:
            resolve_boundary(info, tag, f"key '{key}'")
        except UserError as err:
            raise UserError(f"{file}: {err}") from None


def build_problem(cfg: SolveConfig, mesh, material):
    """A :class:`~fe2nn.macro.problem.Problem` with the config's boundary conditions and loads."""
    from fe2nn.macro.problem import Problem

    problem = Problem(mesh, material, degree=cfg.mesh.degree, quadrature_degree=cfg.mesh.quadrature_degree)
    for d in cfg.dirichlet:
        problem.fix(d.boundary, **{"xyz"[i]: v for i, v in d.components.items()})
    for t in cfg.traction:
        if t.pressure is not None:
            problem.pressure(t.boundary, t.pressure)
        else:
            problem.traction(t.boundary, t.value)
    return problem


def write_run_record(out_dir: Path, argv: Optional[Sequence[str]], args, settings: dict, mesh_path, mesh_sha256: str,
                     comm, outcome: dict, command: str = "solve", extra: Optional[dict] = None) -> None:
    """``run.json`` in the output directory (rank 0, atomically): what was run -- the command
    (``fe2nn COMMAND ARGV``; ARGV None: this process's own, ``sys.argv[2:]``), the config with its
    ``--set`` changes applied, the mesh and its SHA-256, fe2nn's version and commit, the ranks, and
    ``extra`` (validate: which of its runs this is) -- and how it ended (``finished``, ``steps``, or
    the line that ``stopped`` it).  Values that JSON has no type for (paths) are written as text."""
    if comm.rank != 0:
        return
    import json
    import shlex

    import fe2nn
    from fe2nn.io_utils import git_commit, write_text_atomic

    argv = sys.argv[2:] if argv is None else argv
    record = {"command": f"fe2nn {command} " + shlex.join(argv), "config_file": str(Path(args.config).resolve()),
              "overrides": list(args.overrides), "config": settings,
              "mesh_file": str(Path(mesh_path).resolve()), "mesh_sha256": mesh_sha256,
              "fe2nn_version": fe2nn.__version__, "git_commit": git_commit(), "ranks": comm.size,
              "resumed": bool(args.resume), **(extra or {}), **outcome}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / RUN_RECORD, json.dumps(record, indent=2, default=str) + "\n")


class RunOutcome:
    """How a solve ended, for its ``run.json``: ``with RunOutcome(write) as outcome: ...;
    outcome.finish(n_steps)``.  On leaving the block ``write(outcome)`` is called with
    ``{"finished": True, "steps": n}``, with ``{"finished": False, "stopped": line}`` after a
    SolverError or Interrupted, or with ``{"finished": False}`` after anything else -- except a
    UserError (a checkpoint that does not fit the run, refused before any step): no results, no
    record.  ``write`` None records nothing."""

    def __init__(self, write: Optional[Callable[[dict], None]]):
        self.write, self.value = write, {"finished": False}

    def finish(self, steps: int) -> None:
        self.value = {"finished": True, "steps": steps}

    def __enter__(self) -> "RunOutcome":
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if self.write is None or (kind is not None and issubclass(kind, UserError)):
            return False
        if kind is not None and issubclass(kind, (SolverError, Interrupted)):
            self.value = {"finished": False, "stopped": str(err)}
        self.write(self.value)
        return False


def is_results(path) -> bool:
    """Whether ``path`` is the output directory of a solve (it has steps.csv)."""
    return (Path(path) / "steps.csv").is_file()


def summarize_results(path) -> dict:
    """What a solve's output directory holds (``fe2nn inspect DIR``): its run record (``run.json``,
    when the run wrote one) and a digest of its steps table."""
    import csv
    import json

    import numpy as np

    d = Path(path)
    try:
        with open(d / "steps.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        R = np.array([[float(r[f"reaction_{c}"]) for c in "xyz"] for r in rows]).reshape(-1, 3)
        its = [int(r["iterations"]) for r in rows]
        wall = sum(float(r["wall_time"]) for r in rows)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{d / 'steps.csv'}: not a steps table written by fe2nn solve ({err})") from None
    record = None
    if (d / RUN_RECORD).is_file():
        try:
            record = json.loads((d / RUN_RECORD).read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{d / RUN_RECORD}: unreadable run record ({err})") from None
    norms = np.linalg.norm(R, axis=1)
    k = int(np.argmax(norms)) if len(rows) else None
    return {"path": str(d), "record": record, "steps": len(rows),
            "end": {"time": float(rows[-1]["time"]), "load_factor": float(rows[-1]["load_factor"])} if rows else None,
            "largest_reaction": {"step": int(rows[k]["step"]), "norm": float(norms[k]), "vector": R[k].tolist()}
            if rows else None,
            "newton_iterations": {"total": sum(its), "max": max(its, default=0)}, "step_wall_time_s": wall,
            "files": sorted(p.name for p in d.iterdir() if not p.name.startswith("."))}


def results_report(s: dict) -> str:
    """The text of ``fe2nn inspect DIR`` for a solve's output directory."""
    lines = [f"solve results {s['path']}"]
    rec = s["record"]
    if rec is None:
        lines.append(f"  no {RUN_RECORD} (a run of fe2nn before it wrote one): what was run is not recorded")
    else:
        end = (f"finished, {rec.get('steps')} steps" if rec.get("finished")
               else f"did not finish: {rec.get('stopped', 'ended by an error')}")
        lines += [f"  {rec.get('command', '?')}  ({end}; {rec.get('ranks', '?')} rank(s)"
                  + (", resumed" if rec.get("resumed") else "") + ")",
                  f"  material {rec.get('config', {}).get('material', {}).get('model', '?')!r}, mesh "
                  f"{Path(rec.get('mesh_file', '?')).name} (sha256 {str(rec.get('mesh_sha256', ''))[:12]}…), "
                  f"fe2nn {rec.get('fe2nn_version', '?')}"
                  + (f" at {rec['git_commit'][:12]}" if rec.get("git_commit") else "")]
    if s["steps"]:
        r = s["largest_reaction"]
        lines += [f"  {s['steps']} steps to t = {s['end']['time']:.6g} s (load factor {s['end']['load_factor']:.6g}); "
                  f"Newton iterations {s['newton_iterations']['total']} (at most {s['newton_iterations']['max']} "
                  f"per step); {s['step_wall_time_s']:.3g} s in the steps",
                  f"  largest reaction |R| = {r['norm']:.6g} N at step {r['step']}"]
    else:
        lines.append("  no converged step")
    lines.append("  files: " + ", ".join(s["files"]))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    file = args.config
    cfg = load_config(file, args.overrides)
    from fe2nn.materials.registry import build_material, parse_material

    parse_material(cfg.material, file)
    mesh_path = resolve_path(file, cfg.mesh.file)
    out_dir = Path(args.output) if args.output else resolve_path(file, cfg.output.dir)

    from mpi4py import MPI

    from fe2nn.macro.problem import inspect_msh

    try:
        info = inspect_msh(mesh_path, MPI.COMM_WORLD)
    except UserError as err:
        raise UserError(f"{file}: key 'mesh.file': {err}") from None
    check_boundaries(cfg, file, info)
    material = build_material(cfg.material, file)

    from fe2nn.macro.problem import read_mesh
    from fe2nn.macro.solver import solve

    mesh = read_mesh(mesh_path, MPI.COMM_WORLD)
    problem = build_problem(cfg, mesh, material)
    from fe2nn.fe2 import OODMonitor

    from fe2nn.macro.checkpoint import Checkpoint, fingerprint

    settings = load_toml(file, args.overrides)
    problem_id = fingerprint(settings, mesh_path)
    checkpoint = Checkpoint(out_dir, cfg.output.checkpoint_every, problem_id, MPI.COMM_WORLD)
    monitor = OODMonitor()  # out-of-distribution points of a surrogate per step (no-op otherwise)
    callbacks = [monitor]
    history = None
    if cfg.output.strain_paths:
        from fe2nn.macro.history import FILE_NAME, StrainHistory

        history = StrainHistory(t0=cfg.load.times[0])
        callbacks.append(history)
    record = lambda outcome: write_run_record(  # noqa: E731
        out_dir, argv, args, settings, mesh_path, problem_id["mesh_sha256"], MPI.COMM_WORLD, outcome)
    with RunOutcome(record) as outcome:  # run.json, written after the strain paths
        try:
            result = solve(problem, cfg.load.times, cfg.load.factors, steps=cfg.load.steps, max_dt=cfg.load.max_dt,
                           reaction=cfg.output.reaction, output=out_dir, **cfg.solver.solve_kwargs(),
                           vtx=cfg.output.vtx, every=cfg.output.every, plot=cfg.output.plot, progress=not args.quiet,
                           callback=callbacks, checkpoint=checkpoint, resume=args.resume)
        except UserError:  # a checkpoint that does not fit this run, refused before any step: no results
            history = None
            raise
        finally:  # the converged steps, also when a later step fails
            if history is not None:
                history.write(out_dir / FILE_NAME, attrs={"config": Path(file).name, "mesh": Path(mesh_path).name})
        outcome.finish(len(result.steps))
    from fe2nn.io_utils import rank0_print

    sv = result.solver
    if monitor.active:
        rank0_print(monitor.line())
    rank0_print(f"done: {len(result.steps)} steps, {sv.n_dofs} dofs, {sv.comm.allreduce(sv.qf.n_points)} "
                f"quadrature points, {sv.comm.size} rank(s); results in {out_dir}")
    spent = {k: sv.comm.allreduce(sum(r.timings.get(k, 0.0) for r in result.steps), op=MPI.MAX)
             for k in ("constitutive", "assembly", "solve")}
    rank0_print(f"  time [s, slowest rank]: constitutive law {spent['constitutive']:.1f}, assembly "
                f"{spent['assembly']:.1f}, linear solves {spent['solve']:.1f}")
    if cfg.output.vtx:
        rank0_print(f"  open in ParaView: {out_dir / 'displacement.bp'}, {out_dir / 'fields.bp'} (VTX/ADIOS2)")
    if history is not None:
        rank0_print(f"  strain paths at the quadrature points: {out_dir / FILE_NAME}")
    rank0_print(f"  steps table: {out_dir / 'steps.csv'}" + (f"; plot: {out_dir / 'force_displacement.png'}" if cfg.output.plot else "")
                + f"; what was run: {out_dir / RUN_RECORD}")
    return 0
