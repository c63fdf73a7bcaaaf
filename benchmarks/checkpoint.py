"""Benchmark of solve checkpoints: what a checkpoint after every step costs as the run grows.

The 3D plate with a hole in J2 plasticity (as ``macro_j2.py``), loaded in N steps with VTX output
and strain paths after every step, once without checkpoints and once with ``checkpoint_every = 1``.
For each checkpoint it records the wall time of writing it and the bytes it wrote: ``checkpoint/``
(the state, and meta.json) plus what it appended to ``checkpoint.history/`` (the new frames,
strains and step records).  Were every frame or step record rewritten at each checkpoint, these
would grow linearly with the step (quadratically over the run); here they stay flat.

Then a run on the largest number of ranks is stopped after the checkpoint of the middle step and
resumed on each number of ranks: the time to restore it (state, step records, frames replayed
into the VTX files), on the same partition and moved onto another one.

    python benchmarks/checkpoint.py --out results/checkpoint.json       # 40 steps, 1 and 2 ranks
    python benchmarks/checkpoint.py --quick                             # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from macro_j2 import (plate_mesh, plate_parser, plate_problem, plate_setup,  # noqa: E402  (the same plate,
                      relaunch)  # noqa: E402  (command line and relaunch)

from fe2nn.io_utils import write_text_atomic  # noqa: E402


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0


def worker(args) -> None:
    from mpi4py import MPI

    from fe2nn.macro import read_mesh, solve
    from fe2nn.macro.checkpoint import Checkpoint
    from fe2nn.macro.history import StrainHistory

    comm = MPI.COMM_WORLD
    out = Path(args.output)
    prob = plate_problem(read_mesh(args.mesh, comm), args.displacement)
    checkpoint = Checkpoint(out, args.every, {"benchmark": "checkpoint"}, comm)
    saves = []
    save = Checkpoint.save
    restored = {}
    if args.resume:  # time the restore: from before reading the checkpoint to the first step
        load, parts = Checkpoint.load, Checkpoint.restore_parts

        def timed_load(self):
            comm.barrier()
            restored["t0"] = time.perf_counter()
            return load(self)

        def timed_parts(self, *a):
            out = parts(self, *a)
            comm.barrier()
            restored["restore_time"] = time.perf_counter() - restored.pop("t0")
            restored["moved_from"] = self.moved_from
            return out

        Checkpoint.load, Checkpoint.restore_parts = timed_load, timed_parts

    def timed_save(self, solver, records, loop, parts):
        comm.barrier()
        history_dir = getattr(self, "history", self.root / "checkpoint.history")  # (none before 2026-11-27)
        history = _bytes(history_dir) if comm.rank == 0 else 0
        t0 = time.perf_counter()
        save(self, solver, records, loop, parts)
        comm.barrier()
        wall = time.perf_counter() - t0
        if args.stop_after and len(records) >= args.stop_after:
            if comm.rank == 0:
                Path(args.result).write_text(json.dumps(dict(stopped_after=len(records))))
            comm.barrier()
            os._exit(0)  # as if killed right after this checkpoint
        if comm.rank == 0:
            meta = self.dir / "meta.json"
            saves.append(dict(step=len(records), wall_time=wall, state_bytes=_bytes(self.dir),
                              meta_bytes=meta.stat().st_size if meta.is_file() else 0,
                              appended_bytes=_bytes(history_dir) - history))

    Checkpoint.save = timed_save
    t0 = time.perf_counter()
    solve(prob, times=[0.0, 1.0], factors=[0.0, 1.0], steps=args.steps, reaction="top", output=out,
          linear_solver="iterative", progress=False, callback=[StrainHistory()], checkpoint=checkpoint,
          resume=args.resume)
    wall = time.perf_counter() - t0
    if comm.rank == 0:
        Path(args.result).write_text(json.dumps(dict(ranks=comm.size, every=args.every, solve_time=wall,
                                                     saves=saves, **restored)))


def run(ranks: int, every: int, mesh: Path, steps: int, displacement: float, tmp: Path) -> dict:
    return relaunch(__file__, ranks, ["--mesh", str(mesh), "--steps", str(steps), "--every", str(every),
                                      "--displacement", str(displacement), "--output", str(tmp / f"out{ranks}_{every}")],
                    tmp / f"r{ranks}_e{every}.json")


def main() -> int:
    ap = plate_parser(__doc__.splitlines()[0], steps=40)
    ap.add_argument("--every", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--stop-after", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    setup = plate_setup(ap, worker)
    if setup is None:  # (a worker)
        return 0
    args, h, steps, ranks = setup
    rows = []
    with plate_mesh(h) as (tmp, mesh):
        for n in ranks:
            plain, checked = run(n, 0, mesh, steps, args.displacement, tmp), run(n, 1, mesh, steps,
                                                                                 args.displacement, tmp)
            rows.append(dict(ranks=n, solve_time=plain["solve_time"], solve_time_checkpointed=checked["solve_time"],
                             saves=checked["saves"]))
        writer, stop = max(ranks), steps // 2
        killed = tmp / "killed"
        relaunch(__file__, writer, ["--mesh", str(mesh), "--steps", str(steps), "--every", "1", "--stop-after",
                                    str(stop), "--displacement", str(args.displacement), "--output", str(killed)],
                 tmp / "killed.json")
        resumes = []
        for n in ranks:
            out = tmp / f"resumed{n}"
            shutil.copytree(killed, out)
            r = relaunch(__file__, n, ["--mesh", str(mesh), "--steps", str(steps), "--every", "1", "--resume",
                                       "--displacement", str(args.displacement), "--output", str(out)],
                         tmp / f"resumed{n}.json")
            resumes.append(dict(ranks=n, written_on=writer, after_step=stop, restore_time=r["restore_time"],
                                moved=r["moved_from"] is not None, solve_time=r["solve_time"]))
    print(f"\nplate with a hole, J2, h = {h} m, {steps} load steps, VTX frames and strain paths after every step, "
          f"a checkpoint after every step")
    print(f"{'ranks':>5} {'solve [s]':>10} {'with ckpt [s]':>13} {'ckpt at step':>12} {'write [s]':>10} "
          f"{'state [kB]':>11} {'of it meta.json':>15} {'appended [kB]':>14}")
    for r in rows:
        s = r["saves"]
        for i, save in enumerate(s):
            if i in (0, 1, len(s) // 2, len(s) - 1):
                head = (f"{r['ranks']:>5} {r['solve_time']:>10.2f} {r['solve_time_checkpointed']:>13.2f}" if i == 0
                        else " " * 30)
                print(f"{head} {save['step']:>12} {save['wall_time']:>10.4f} {save['state_bytes'] / 1e3:>11.1f} "
                      f"{save['meta_bytes'] / 1e3:>15.2f} {save['appended_bytes'] / 1e3:>14.1f}")
        if len(s) > 3:
            k = len(s) // 4  # mean write time over the first and the last quarter of the run
            first = sum(x["wall_time"] for x in s[1:1 + k]) / k
            last = sum(x["wall_time"] for x in s[-k:]) / k
            print(f"{'':>30} mean write time, steps 2-{k + 1}: {first:.4f} s, last {k} steps: {last:.4f} s")
    print(f"\nresumed from the checkpoint of step {resumes[0]['after_step']} of {steps}, written on "
          f"{resumes[0]['written_on']} rank(s)")
    print(f"{'ranks':>5} {'partition':>10} {'restore [s]':>12} {'rest of the run [s]':>20}")
    for r in resumes:
        print(f"{r['ranks']:>5} {'moved' if r['moved'] else 'same':>10} {r['restore_time']:>12.3f} "
              f"{r['solve_time'] - r['restore_time']:>20.2f}")
    if args.out:  # atomically, as every benchmark's JSON
        write_text_atomic(args.out, json.dumps(dict(h=h, steps=steps, runs=rows, resumes=resumes), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
