"""Throughput of the RNO surrogate vs the RVEs it replaces (stress + consistent tangent).

    python benchmarks/surrogate.py [--surrogate surrogates/aluminium_taylor] [--out results/surrogate.json] [--quick]
                                   [--device cpu|cuda] [--tangent-dtype auto|float32|float64]

One ``Material.update`` call per measurement on a batch of n points (one increment from
a non-trivial state) with the macro solver's settings: float64 stress and state, the tangent
in float32 on a CPU and in float64 on a GPU (``--tangent-dtype``), glibc keeping freed memory
(:func:`fe2nn.fe2.keep_freed_memory`); on the CPU (default) or a CUDA device (``--device cuda``:
strains go in and stress and tangent come back as CPU tensors, as in the macro solver, and
the copies are timed).  Reports points per second for the RNO at
n = 1e3, 1e4, 1e5, 1e6 (1e6 only when the estimated memory fits), and for the Taylor
and FFT RVEs (fe2nn.micro) at the batch sizes that finish in reasonable time; the
speedup is the ratio of points per second.  Timings: best of ``--repeat`` calls after
one warm-up call, each timed as the first call of a load step (``forget_last_update``: the
later Newton iterations of a step start the crystal's local problems from the last call's
solution, which makes them cheaper).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _time_update(mat, n: int, repeat: int, dt: float = 0.1, strain_amp: float = 2e-3):
    g = torch.Generator().manual_seed(0)
    d = torch.randn(n, 6, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    st = mat.initial_state(n)
    # one increment first, so that the timed one starts from a loaded state
    _, _, st = mat.update(0.5 * strain_amp * d, dt, st)
    best = float("inf")
    for _ in range(repeat + 1):  # first call is a warm-up
        mat.forget_last_update()  # each call a step's first: an RVE does not start from the last call's solution
        t0 = time.perf_counter()
        stress, tangent, _ = mat.update(strain_amp * d, dt, st)
        stress, tangent = stress.cpu(), tangent.cpu()  # synchronizes a CUDA device
        best = min(best, time.perf_counter() - t0)
    assert stress.shape == (n, 6) and tangent.shape == (n, 6, 6) and torch.isfinite(tangent).all()
    return best


def _rno_material(path: str | None, device: str, tangent_dtype: str):
    from fe2nn.surrogate.material import RNOMaterial
    from fe2nn.surrogate.rno import RNO, RNOArch

    if path and Path(path).exists():
        return RNOMaterial(path, device=device, tangent_dtype=tangent_dtype), f"{path}"
    torch.manual_seed(0)
    m = RNO(RNOArch(k=4, f_hidden=[128, 128], g_hidden=[64, 64]), 2e-3, 1e-3, 1e8)
    return RNOMaterial(m, device=device, tangent_dtype=tangent_dtype), "untrained RNO k=4, F 128x128, G 64x64 (no surrogate file found)"


def _rve(solver: str, grains: int, grid: int, device: str):
    from fe2nn.micro.rve import MicrostructureConfig, RVEConfig, build_rve

    cfg = RVEConfig(solver=solver, material="aluminium", device=device,
                    microstructure=MicrostructureConfig(n_grains=grains, grid=grid, seed=7))
    return build_rve(cfg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--surrogate", default=str(REPO / "surrogates" / "aluminium_taylor"))
    ap.add_argument("--out", default=None, help="write results as JSON")
    ap.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    ap.add_argument("--taylor-grains", type=int, default=100)
    ap.add_argument("--fft-grid", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--tangent-dtype", default="auto", choices=["auto", "float32", "float64"],
                    help="precision of the surrogate's tangent (the solver's default, auto: float32 on a CPU, "
                         "float64 on a GPU)")
    ap.add_argument("--max-mem-gb", type=float, default=8.0, help="skip RNO sizes estimated above this")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(args.threads, 1))
    from fe2nn.fe2 import keep_freed_memory

    keep_freed_memory()  # as the macro solver's material builders do
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available")
    rno, rno_desc = _rno_material(args.surrogate, args.device, args.tangent_dtype)
    sizes = [1000, 10000] if args.quick else [1000, 10000, 100000, 1000000]
    rows, res = [], {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "device": args.device,
                     "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "",
                     "rno": rno_desc, "tangent_dtype": str(rno.tangent_dtype).removeprefix("torch."), "rno_points_per_s": {}, "rve": {}}
    width = max(rno.model.arch.f_hidden + rno.model.arch.g_hidden)
    for n in sizes:
        mem = min(n, rno.chunk) * width * 6 * 8 * 12 / 1e9 + n * (6 + 36 + 2 * rno.k + 12) * 8 * 4 / 1e9
        if mem > args.max_mem_gb:
            res["rno_points_per_s"][str(n)] = None
            rows.append(("RNO", n, None, "skipped (memory)"))
            continue
        t = _time_update(rno, n, args.repeat if n < 1000000 else 1)
        res["rno_points_per_s"][str(n)] = n / t
        rows.append(("RNO", n, t, ""))
        print(f"RNO {n} points: {t:.3f} s ({n / t:.4g} points/s)", flush=True)
    rve_sizes = {"taylor": [10, 100] if args.quick else [100, 1000, 10000], "fft": [1] if args.quick else [1, 4]}
    for solver, ns in rve_sizes.items():
        try:
            mat = _rve(solver, args.taylor_grains, args.fft_grid, args.device)
        except Exception as err:  # noqa: BLE001 - report and skip an RVE that cannot be built here
            res["rve"][solver] = {"skipped": f"{type(err).__name__}: {err}"}
            rows.append((solver, 0, None, f"skipped: {err}"))
            continue
        desc = (f"Taylor, {args.taylor_grains} grains" if solver == "taylor"
                else f"FFT, {args.fft_grid}^3 voxels, {args.taylor_grains} grains")
        out = {"description": desc, "points_per_s": {}}
        for n in ns:
            t = _time_update(mat, n, 1)
            out["points_per_s"][str(n)] = n / t
            rows.append((solver, n, t, desc))
            print(f"{solver} {n} points: {t:.3f} s ({n / t:.4g} points/s)", flush=True)
        best = max(out["points_per_s"].values())
        rno_best = max(v for v in res["rno_points_per_s"].values() if v)
        out["speedup_of_rno"] = rno_best / best
        res["rve"][solver] = out
    print(f"{'material':<8} {'points':>9} {'time [s]':>10} {'points/s':>12}  note")
    for name, n, t, note in rows:
        if t is None:
            print(f"{name:<8} {n:>9} {'-':>10} {'-':>12}  {note}")
        else:
            print(f"{name:<8} {n:>9} {t:>10.4f} {n / t:>12.4g}  {note}")
    for solver, r in res["rve"].items():
        if "speedup_of_rno" in r:
            print(f"speedup RNO vs {solver} (best points/s each): {r['speedup_of_rno']:.3g}x")
    if args.out:
        from fe2nn.io_utils import write_text_atomic

        write_text_atomic(args.out, json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
