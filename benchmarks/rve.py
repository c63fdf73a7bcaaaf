"""Micro-scale throughput: single crystal, Taylor RVE and FFT RVE (aluminium).

* single crystal: points x increments per second of ``SingleCrystal.update`` for several batch
  sizes (random orientations, pre-loaded to 2e-3 strain, then 10 timed increments of 2e-4 at 1e-3/s),
  with the mean local Newton iterations per point and increment;
* Taylor RVE, 100 grains: macro-point increments per second for a batch of macro points;
* FFT RVE, 20 grains, 8^3 / 16^3 / 32^3 voxels: uniaxial tension to 2 % strain (mixed control,
  ``fe2nn.micro.fft.uniaxial_stress_path``), wall time, Newton and CG iterations per increment.
  Skipped with a note when ``fe2nn.micro.fft`` is not importable.

    python benchmarks/rve.py [--quick] [--out FILE] [--device cpu|cuda] [--fft-steps N]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from fe2nn.io_utils import write_text_atomic
from fe2nn.micro.crystal import SingleCrystal, load_params
from fe2nn.micro.microstructure import Microstructure, random_quaternions
from fe2nn.micro.taylor import TaylorRVE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _uniaxial_like(n: int, amp: float, device) -> torch.Tensor:
    """Isochoric tension-like strain directions (n, 6), Mandel, scaled to ``amp`` along x."""
    d = torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)
    return (amp * d).expand(n, 6).clone()


def bench_single_crystal(batches, steps: int, device) -> list:
    p = load_params("aluminium")
    rows = []
    for n in batches:
        q = torch.from_numpy(random_quaternions(min(n, 4096), np.random.default_rng(0)))
        m = q.shape[0] if n % q.shape[0] == 0 else 1
        mat = SingleCrystal(p, q[:m], device=device)
        state = mat.initial_state(n)
        dstrain = _uniaxial_like(n, 2e-4, device)
        dt = 2e-4 / 1e-3
        # pre-load past yield (~1e-3) outside the timing
        for k in range(1, 11):
            _, _, state = mat.update(dstrain * k, dt, state)
        iters = 0.0
        _sync(mat.device)
        t0 = time.perf_counter()
        for k in range(1, steps + 1):
            _, _, state = mat.update(dstrain * (10 + k), dt, state)
            iters += float(mat.info["iterations"].double().mean())
        _sync(mat.device)
        wall = time.perf_counter() - t0
        rows.append(dict(batch=n, steps=steps, wall_s=wall, updates_per_s=n * steps / wall,
                         newton_iterations=iters / steps, p_final=float(state["p"].mean())))
    return rows


def bench_taylor(batches, grains: int, steps: int, device) -> list:
    p = load_params("aluminium")
    q = torch.from_numpy(random_quaternions(grains, np.random.default_rng(1)))
    rve = TaylorRVE(p, q, device=device)
    rows = []
    for n in batches:
        state = rve.initial_state(n)
        dstrain = _uniaxial_like(n, 2e-4, device)
        dt = 2e-4 / 1e-3
        for k in range(1, 11):  # pre-load past yield outside the timing
            _, _, state = rve.update(dstrain * k, dt, state)
        hm = 0.0
        _sync(rve.device)
        t0 = time.perf_counter()
        for k in range(1, steps + 1):
            _, _, state = rve.update(dstrain * (10 + k), dt, state)
            hm = max(hm, float(rve.info["hill_mandel"].max()))
        _sync(rve.device)
        wall = time.perf_counter() - t0
        rows.append(dict(grains=grains, batch=n, steps=steps, wall_s=wall,
                         increments_per_s=n * steps / wall, grain_updates_per_s=n * grains * steps / wall,
                         hill_mandel_max=hm))
    return rows


def bench_fft(grids, grains: int, steps: int, max_strain: float, device) -> dict:
    try:
        from fe2nn.micro import fft
    except Exception as err:  # the FFT solver is developed separately
        return dict(skipped=f"fe2nn.micro.fft not importable ({type(err).__name__}: {err})", rows=[])
    p = load_params("aluminium")
    rows = []
    for N in grids:
        ms = Microstructure.voronoi(grains, N, seed=7)
        rve = fft.FFTRVE(params=p, microstructure=ms, device=device)
        t0 = time.perf_counter()
        res = fft.uniaxial_stress_path(rve, component=0, strain_rate=1e-3, max_strain=max_strain,
                                       n_steps=steps, n_rves=1)
        wall = time.perf_counter() - t0
        rows.append(dict(grid=N, voxels=N ** 3, grains=grains, steps=steps, wall_s=wall,
                         wall_per_increment_s=float(res["wall_time"].double().mean()),
                         newton_per_increment=float(res["newton_iterations"].double().mean()),
                         cg_per_increment=float(res["cg_iterations"].double().mean()),
                         stress_final_MPa=float(res["stress"][-1, 0, 0]) / 1e6,
                         hill_mandel_max=float(res["hill_mandel"].max())))
    return dict(skipped=None, rows=rows)


def _table(title: str, rows: list, cols: list) -> str:
    if not rows:
        return f"{title}: (no rows)\n"
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    lines = [title, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(_fmt(r[c]).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--out", help="write results as JSON to this file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fft-steps", type=int, default=None, help="increments to 2%% strain (default 20)")
    ap.add_argument("--fft-grids", type=int, nargs="*", default=None, help="grid sizes N (N^3 voxels)")
    ap.add_argument("--skip-fft", action="store_true")
    ap.add_argument("--sections", nargs="*", default=["crystal", "taylor", "fft"],
                    choices=["crystal", "taylor", "fft"], help="which parts to run (default all)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_default_dtype(torch.float64)

    sc_batches = [1, 64, 512] if args.quick else [1, 64, 1024, 8192]
    tay_batches = [4] if args.quick else [1, 16, 64]
    steps = 3 if args.quick else 10
    grids = args.fft_grids if args.fft_grids is not None else ([8] if args.quick else [8, 16, 32])
    fft_steps = args.fft_steps or (4 if args.quick else 20)

    result = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                  machine=platform.machine(), python=sys.version.split()[0])
    if "crystal" in args.sections:
        result["single_crystal"] = bench_single_crystal(sc_batches, steps, device)
        print(_table(f"Single crystal (aluminium, {device}), {steps} plastic increments",
                     result["single_crystal"], ["batch", "wall_s", "updates_per_s", "newton_iterations"]),
              flush=True)
    if "taylor" in args.sections:
        result["taylor"] = bench_taylor(tay_batches, 10 if args.quick else 100, steps, device)
        print(_table("Taylor RVE", result["taylor"],
                     ["grains", "batch", "wall_s", "increments_per_s", "grain_updates_per_s", "hill_mandel_max"]),
              flush=True)
    if args.skip_fft or "fft" not in args.sections:
        result["fft"] = dict(skipped="--skip-fft", rows=[])
    else:
        result["fft"] = bench_fft(grids, 20, fft_steps, 0.02, device)
    if result["fft"]["skipped"]:
        print(f"FFT RVE: skipped: {result['fft']['skipped']}")
    else:
        print(_table(f"FFT RVE (20 grains, uniaxial tension to 2 % in {fft_steps} increments)", result["fft"]["rows"],
                     ["grid", "wall_s", "wall_per_increment_s", "newton_per_increment", "cg_per_increment",
                      "stress_final_MPa", "hill_mandel_max"]))
    if args.out:
        write_text_atomic(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
