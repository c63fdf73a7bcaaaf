"""Benchmark of recording strain paths (``[output] strain_paths = true``): memory and write time.

The 3D plate with a hole in J2 plasticity (as ``macro_j2.py``) in N load steps, solved once
without and once with :class:`fe2nn.macro.history.StrainHistory`.  Each rank streams its strains to
a temporary file, so recording should add little to the peak memory of a rank however many steps
the run has; rank 0 gathers a slab of steps at a time to write ``strain_paths.h5``.  Reported per
rank count: the quadrature points, the bytes recorded per rank (points x (steps + 1) x 6 x 8), the
extra peak resident memory of the slowest rank with recording (against the run without), and the
time to write the file.

    python benchmarks/strain_paths.py --out results/strain_paths.json    # 300 steps, 1 and 2 ranks
    python benchmarks/strain_paths.py --quick                            # smoke run
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from macro_j2 import (plate_mesh, plate_parser, plate_problem, plate_setup,  # noqa: E402  (the same plate,
                      relaunch)  # noqa: E402  (command line and relaunch)

from fe2nn.io_utils import write_text_atomic  # noqa: E402


def _peak_mb() -> float:
    """Peak resident memory of this process so far [MB] (Linux: ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def worker(args) -> None:
    from mpi4py import MPI

    from fe2nn.macro import read_mesh, solve
    from fe2nn.macro.history import StrainHistory

    comm = MPI.COMM_WORLD
    out = Path(args.output)
    prob = plate_problem(read_mesh(args.mesh, comm), args.displacement)
    history = StrainHistory() if args.record else None
    before = _peak_mb()
    result = solve(prob, times=[0.0, 1.0], factors=[0.0, 1.0], steps=args.steps, reaction="top", output=out,
                   vtx=False, plot=False, linear_solver="iterative", progress=False,
                   callback=[history] if history else None)
    comm.barrier()
    t0 = time.perf_counter()
    if history is not None:
        history.write(out / "strain_paths.h5")
    comm.barrier()
    write = time.perf_counter() - t0
    growth = comm.allreduce(_peak_mb() - before, op=MPI.MAX)
    n_points = comm.allreduce(result.solver.qf.n_points)
    recorded = comm.allreduce(result.solver.qf.n_points * (len(result.steps) + 1) * 48, op=MPI.MAX)
    if comm.rank == 0:
        Path(args.result).write_text(json.dumps(dict(ranks=comm.size, record=bool(args.record), points=n_points,
                                                     steps=len(result.steps), peak_growth_mb=growth,
                                                     recorded_mb_per_rank=recorded / 1e6, write_time=write)))


def main() -> int:
    ap = plate_parser(__doc__.splitlines()[0], steps=300)
    ap.add_argument("--record", type=int, default=0, help=argparse.SUPPRESS)
    setup = plate_setup(ap, worker)
    if setup is None:  # (a worker)
        return 0
    args, h, steps, ranks = setup
    rows = []
    with plate_mesh(h) as (tmp, mesh):
        for n in ranks:
            runs = [relaunch(__file__, n, ["--mesh", str(mesh), "--steps", str(steps), "--record", str(rec),
                                           "--displacement", str(args.displacement), "--output", str(tmp / f"o{n}{rec}")],
                             tmp / f"r{n}_{rec}.json") for rec in (0, 1)]
            plain, recorded = runs
            rows.append(dict(ranks=n, points=recorded["points"], steps=recorded["steps"],
                             recorded_mb_per_rank=recorded["recorded_mb_per_rank"],
                             extra_peak_mb=recorded["peak_growth_mb"] - plain["peak_growth_mb"],
                             write_time=recorded["write_time"]))
    print(f"\nplate with a hole, J2, h = {h} m, {steps} load steps, strain paths recorded after every step")
    print(f"{'ranks':>5} {'points':>8} {'recorded / rank [MB]':>21} {'extra peak memory [MB]':>23} {'write [s]':>10}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['points']:>8} {r['recorded_mb_per_rank']:>21.1f} {r['extra_peak_mb']:>23.1f} "
              f"{r['write_time']:>10.3f}")
    if args.out:  # atomically, as every benchmark's JSON
        write_text_atomic(args.out, json.dumps(dict(h=h, steps=steps, runs=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
