"""Benchmark of the macro solver: 3D plate with a hole in J2 plasticity, 1 and 2 MPI ranks.

P2 tetrahedra with the 4-point rule (strain varies linearly in a cell).  For each
rank count the script re-launches itself under ``mpirun -n N`` and reports
quadrature points, dofs, and per load step: Newton iterations and wall time split
into constitutive update (strain Expression + batched material + write-back),
assembly (residual, Jacobian, lifting) and linear solve.

    python benchmarks/macro_j2.py --out results/macro_j2.json           # >= 100k points
    python benchmarks/macro_j2.py --quick                               # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def plate_problem(mesh, displacement: float):
    """The benchmark's problem on a read mesh: J2 aluminium-like plate, P2, 4-point rule, symmetry
    planes fixed and the top face pulled to ``displacement`` [m] in y (also benchmarks/checkpoint.py)."""
    from fe2nn.macro import Problem
    from fe2nn.materials.j2 import J2Plasticity

    prob = Problem(mesh, J2Plasticity(70e9, 0.33, 250e6, H_iso=1e9), degree=2, quadrature_degree=2)
    return prob.fix("xsym", x=0.0).fix("ysym", y=0.0).fix("zsym", z=0.0).fix("top", y=displacement)


@contextmanager
def plate_mesh(h: float):
    """A temporary directory with the plate mesh of far-field element size ``h`` [m] in it: yields
    (directory, mesh file)."""
    sys.path.insert(0, str(REPO / "meshes"))
    from plate_hole import build

    with tempfile.TemporaryDirectory() as tmpdir:
        mesh = Path(tmpdir) / "plate_hole.msh"
        build(str(mesh), h=h)
        yield Path(tmpdir), mesh


def plate_parser(description: str, steps: int) -> argparse.ArgumentParser:
    """The command line of a benchmark that solves the plate in ``steps`` load steps (4 with
    ``--quick``) and re-launches itself (``relaunch``) per rank count; ``plate_setup`` reads it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="coarse mesh, 4 steps (smoke run)")
    ap.add_argument("--h", type=float, default=None, help="far-field element size [m] (default 0.006; quick 0.01)")
    ap.add_argument("--steps", type=int, default=None, help=f"load steps (default {steps}; quick 4)")
    ap.add_argument("--displacement", type=float, default=0.4e-3, help="final y-displacement of the top face [m]")
    ap.add_argument("--ranks", default="1,2", help="comma-separated MPI rank counts")
    ap.add_argument("--out", help="write the results as JSON to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--mesh", "--output", "--result"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.set_defaults(default_steps=steps)
    return ap


def plate_setup(ap: argparse.ArgumentParser, worker) -> Optional[tuple]:
    """Parse a ``plate_parser`` command line: under ``--worker`` run ``worker(args)`` and return
    None, else return (args, h [m], steps, rank counts)."""
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return None
    return (args, args.h or (0.01 if args.quick else 0.006), args.steps or (4 if args.quick else args.default_steps),
            [int(r) for r in args.ranks.split(",")])


def relaunch(script: str, ranks: int, args: list, result: Path) -> dict:
    """Run ``script --worker ARGS --result RESULT`` on ``ranks`` MPI ranks (one thread each) and
    return the JSON it wrote to RESULT; its progress goes to stderr."""
    exe = [sys.executable, script, "--worker", *args, "--result", str(result)]
    mpirun = Path(sys.executable).parent / "mpirun"
    cmd = [str(mpirun), "-n", str(ranks), *exe] if ranks > 1 else exe
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=sys.stderr)
    return json.loads(result.read_text())


def worker(args) -> None:
    from mpi4py import MPI

    from fe2nn.macro import read_mesh, solve

    comm = MPI.COMM_WORLD
    t0 = time.perf_counter()
    mesh = read_mesh(args.mesh, comm)
    t_mesh = time.perf_counter() - t0
    prob = plate_problem(mesh, args.displacement)
    t0 = time.perf_counter()
    res = solve(prob, times=[0.0, 1.0], factors=[0.0, 1.0], steps=args.steps, reaction="top",
                linear_solver=args.linear_solver, progress=True)
    t_solve = time.perf_counter() - t0
    s = res.solver
    steps = []
    for rec in res.steps:
        tm = {k: comm.allreduce(v, op=MPI.MAX) for k, v in rec.timings.items()}
        steps.append(dict(step=rec.step, load_factor=rec.factor, iterations=rec.iterations,
                          wall_time=comm.allreduce(rec.wall_time, op=MPI.MAX), **tm,
                          reaction_y=float(rec.reaction[1])))
    out = dict(ranks=comm.size, quadrature_points=comm.allreduce(s.qf.n_points),
               cells=mesh.mesh.topology.index_map(3).size_global, dofs=s.n_dofs,
               linear_solver=s.linear_solver, mesh_read_time=t_mesh, solve_time=t_solve, steps=steps)
    if comm.rank == 0:
        Path(args.result).write_text(json.dumps(out, indent=1))


def run(ranks: int, mesh: Path, steps: int, displacement: float, linear_solver: str, tmp: Path) -> dict:
    return relaunch(__file__, ranks, ["--mesh", str(mesh), "--steps", str(steps), "--displacement", str(displacement),
                                      "--linear-solver", linear_solver], tmp / f"r{ranks}.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="coarse mesh, 2 steps (smoke run)")
    ap.add_argument("--h", type=float, default=None, help="far-field element size [m] (default 0.0023: 28k cells, 114k points; quick 0.008)")
    ap.add_argument("--steps", type=int, default=None, help="load steps (default 2; quick 2)")
    ap.add_argument("--displacement", type=float, default=0.4e-3,
                    help="final y-displacement of the top face [m] (yield at the hole starts near 0.2e-3)")
    ap.add_argument("--ranks", default="1,2", help="comma-separated MPI rank counts")
    ap.add_argument("--linear-solver", default="iterative", choices=["auto", "direct", "iterative"],
                    help="default: CG + GAMG (MUMPS on 1e5 P2 dofs needs much memory and time)")
    ap.add_argument("--out", help="write the results as JSON to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mesh", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    h = args.h or (0.008 if args.quick else 0.0023)
    steps = args.steps or 2
    rows = []
    with plate_mesh(h) as (tmp, mesh):
        for n in [int(r) for r in args.ranks.split(",")]:
            rows.append(run(n, mesh, steps, args.displacement, args.linear_solver, tmp))
    print(f"\nplate with a hole, J2, P2 tetrahedra, 4-point rule, h = {h} m, {steps} load steps "
          f"to u_top = {args.displacement} m")
    r0 = rows[0]
    print(f"cells {r0['cells']}, quadrature points {r0['quadrature_points']}, dofs {r0['dofs']}, "
          f"linear solver {r0['linear_solver']}")
    print(f"{'ranks':>5} {'step':>4} {'load':>6} {'its':>4} {'wall[s]':>9} {'constit[s]':>10} "
          f"{'assembly[s]':>11} {'solve[s]':>9} {'per it constit/asm/solve [s]':>30}")
    for r in rows:
        for s in r["steps"]:
            it = max(s["iterations"], 1)
            print(f"{r['ranks']:>5} {s['step']:>4} {s['load_factor']:>6.3f} {s['iterations']:>4} {s['wall_time']:>9.3f} "
                  f"{s['constitutive']:>10.3f} {s['assembly']:>11.3f} {s['solve']:>9.3f} "
                  f"{s['constitutive'] / it:>10.3f} {s['assembly'] / it:>9.3f} {s['solve'] / it:>9.3f}")
        print(f"{r['ranks']:>5} total solve {r['solve_time']:.2f} s (mesh read {r['mesh_read_time']:.2f} s)")
    if len(rows) > 1:
        ry = [[s["reaction_y"] for s in r["steps"]] for r in rows]
        dev = max(abs(a - b) / max(abs(x) for x in ry[0]) for a, b in zip(ry[0], ry[-1]))
        print(f"reaction history, {rows[0]['ranks']} vs {rows[-1]['ranks']} ranks: max relative difference {dev:.2e}")
    if args.out:
        from fe2nn.io_utils import write_text_atomic

        write_text_atomic(args.out, json.dumps(dict(h=h, steps=steps, runs=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
