"""Dataset-generation throughput (samples per minute) of `fe2nn generate` on 1 and 2 MPI ranks.

Cases: Taylor RVE (100 grains), FFT RVE (16^3 voxels, 20 grains), and the J2 stand-in
(pipeline overhead), all with 200-increment random-walk/monotonic/cyclic paths.
Each run is a real `fe2nn generate` subprocess (start-up included; it is reported separately
from the in-run time printed by the command).

    python benchmarks/generate.py [--quick] [--out FILE] [--ranks 1 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "taylor": dict(rve='solver = "taylor"\nmaterial = "aluminium"\n[rve.microstructure]\nn_grains = {grains}\n'
                       'grid = 32\nseed = 7\n', grains=100, samples=16, batch=8, module="fe2nn.micro.taylor"),
    "fft": dict(rve='solver = "fft"\nmaterial = "aluminium"\n[rve.microstructure]\nn_grains = {grains}\n'
                    'grid = {grid}\nseed = 7\n', grains=20, grid=16, samples=2, batch=1, module="fe2nn.micro.fft"),
    "j2": dict(rve='solver = "j2"\noptions = {{E = 70e9, nu = 0.33, sigma_y = 100e6, H_iso = 1e9}}\n',
               grains=0, samples=256, batch=64, module="fe2nn.materials.j2"),
}
QUICK = {"taylor": dict(grains=10, samples=8, batch=4), "fft": dict(grains=4, grid=8, samples=2, batch=1),
         "j2": dict(samples=32, batch=16)}


def config_text(case: dict, n_steps: int) -> str:
    n = case["samples"]
    counts = (n - 2 * (n // 4), n // 4, n // 4)
    rve = case["rve"].format(**case)
    return (f'output = "bench.h5"\nn_steps = {n_steps}\nseed = 1\nbatch_size = {case["batch"]}\n'
            f'hill_mandel_tol = 1e-3\n[rve]\n{rve}'
            f'[paths.random_walk]\ncount = {counts[0]}\n[paths.monotonic]\ncount = {counts[1]}\n'
            f'[paths.cyclic]\ncount = {counts[2]}\n')


def run_case(name: str, case: dict, n_steps: int, ranks: int, timeout: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"fe2nn_bench_{name}_"))
    try:
        cfg = work / "gen.toml"
        cfg.write_text(config_text(case, n_steps))
        cmd = [sys.executable, "-m", "fe2nn", "generate", str(cfg), "--no-progress"]
        if ranks > 1:
            cmd = [str(Path(sys.executable).parent / "mpirun"), "-n", str(ranks), *cmd]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
        except subprocess.TimeoutExpired:
            return dict(case=name, ranks=ranks, status=f"timeout after {timeout:.0f} s")
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return dict(case=name, ranks=ranks, status="failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
        m = re.search(r"\[([0-9.]+) s\]", proc.stdout)
        inner = float(m.group(1)) if m else wall
        n = case["samples"]
        return dict(case=name, ranks=ranks, status="ok", samples=n, n_steps=n_steps, grains=case.get("grains"),
                    wall_s=round(wall, 2), run_s=round(inner, 2), samples_per_min=round(60 * n / inner, 2),
                    samples_per_min_wall=round(60 * n / wall, 2), summary=proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (few grains, 20 increments)")
    ap.add_argument("--out", help="write results as JSON")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--timeout", type=float, default=1800.0, help="per run [s]")
    args = ap.parse_args(argv)
    n_steps = 20 if args.quick else 200
    rows = []
    for name in args.cases:
        case = dict(CASES[name], **(QUICK[name] if args.quick else {}))
        if importlib.util.find_spec(case["module"]) is None:
            rows.append(dict(case=name, status=f"skipped: {case['module']} not available"))
            continue
        for r in args.ranks:
            row = run_case(name, case, n_steps, r, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'case':<8} {'ranks':>5} {'samples':>7} {'steps':>5} {'run [s]':>8} {'samples/min':>11}  status")
    for row in rows:
        print(f"{row['case']:<8} {row.get('ranks', '-')!s:>5} {row.get('samples', '-')!s:>7} "
              f"{row.get('n_steps', '-')!s:>5} {row.get('run_s', '-')!s:>8} {row.get('samples_per_min', '-')!s:>11}"
              f"  {row['status']}")
    result = dict(benchmark="generate", quick=args.quick, machine=platform.node(), cpus=os.cpu_count(),
                  torch=torch.__version__, cuda=torch.cuda.is_available(), rows=rows,
                  note="samples/min from the in-run time printed by fe2nn generate (excludes interpreter start-up)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
