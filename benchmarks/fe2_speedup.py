"""FE² timings: the RNO surrogate against the J2 law and against the full FFT RVE.

Two measurements, each on one process (run it on an otherwise idle machine):

A. surrogate vs J2 -- the main demo's problem (demos/plate_hole_rno.toml: mesh, boundary
   conditions, load table) solved with its surrogate (or ``--surrogate``) and with a J2 law
   (aluminium-like parameters); whole-solve wall time (set-up and output excluded) and the
   time spent in ``material.update``.  Target: surrogate <= 1.5 x J2.  ``--device cuda`` runs
   the surrogate on the GPU (the J2 law and the FE solve stay on the CPU).
B. surrogate vs FFT-RVE FE² -- a tiny bar (12 tetrahedra = 12 quadrature points) pulled to
   0.4 % strain, with an FFT RVE of ``--grid``^3 voxels (16, about 5 min; 8 with ``--quick``: a
   toy polycrystal, 8x cheaper) and ``--grains`` grains per point;
   whole-solve wall time and constitutive time per quadrature-point evaluation
   (time in the solver's material evaluation / (points x material calls)).  At 12 points the
   surrogate's cost is per-call overhead, so its cost per point is also measured in a batch
   of 4832 points (the main demo's size; one rank) -- the FFT cost per RVE hardly depends on
   the batch size.  Target: speedup >= 1000 x.

    python benchmarks/fe2_speedup.py --out results/fe2_speedup.json
    python benchmarks/fe2_speedup.py --quick          # smoke run (few steps)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _run(cfg_path: Path, material: dict | None = None, steps: int | None = None, device: str | None = None,
         tangent_dtype: str | None = None):
    from mpi4py import MPI

    from fe2nn.config import resolve_path
    from fe2nn.macro.problem import read_mesh
    from fe2nn.macro.solver import solve
    from fe2nn.materials.registry import build_material
    from fe2nn.macro.run import build_problem, load_config

    cfg = load_config(cfg_path)
    table = dict(material or cfg.material)
    if device and table["model"] == "rno":
        table["device"] = device
    if tangent_dtype and table["model"] == "rno":
        table["tangent_dtype"] = tangent_dtype
    mat = build_material(table, str(cfg_path))
    mesh = read_mesh(resolve_path(cfg_path, cfg.mesh.file), MPI.COMM_WORLD)
    prob = build_problem(cfg, mesh, mat)
    t0 = time.perf_counter()
    times, factors = cfg.load.times, cfg.load.factors
    if steps:  # smoke run: the first `steps` steps of the load table (max_dt long each)
        import numpy as np

        t_end = steps * (cfg.load.max_dt or (times[-1] - times[0]) / steps)
        keep = [t for t in times if t < t_end]
        times, factors = keep + [t_end], [float(np.interp(t, cfg.load.times, cfg.load.factors)) for t in keep + [t_end]]
    res = solve(prob, times, factors, steps=None if cfg.load.max_dt else (steps or cfg.load.steps),
                max_dt=cfg.load.max_dt, reaction=cfg.output.reaction, progress=False, **cfg.solver.solve_kwargs())
    wall = time.perf_counter() - t0
    n = res.solver.qf.n_points
    calls = sum(s.iterations + 1 for s in res.steps)  # stress updates (tangents: one fewer per step)
    const = sum(s.timings["constitutive"] for s in res.steps)
    # where the time goes: material, assembly of residual and Jacobian, linear solves, the rest
    # (strain evaluation is part of the material's time; the rest is output-free bookkeeping)
    split = {f"{key}_s": sum(s.timings[key] for s in res.steps) for key in ("assembly", "solve")}
    split["other_s"] = wall - const - sum(split.values())
    td = getattr(mat, "tangent_dtype", None)
    return {"model": table["model"], "solver": table.get("solver"), "wall_s": wall, "constitutive_s": const, **split,
            **({"tangent_dtype": str(td).removeprefix("torch.")} if td is not None else {}),
            "points": n, "steps": len(res.steps), "material_calls": calls,
            "iterations": [s.iterations for s in res.steps], "cutbacks": sum(s.cutbacks for s in res.steps),
            "per_point_eval_s": const / max(n * calls, 1), "final_reaction": res.steps[-1].reaction.tolist()}


def _update_cost(table: dict, n: int, reps: int = 5) -> float:
    """Median wall time [s] of one ``material.update`` of n points (random 0.1 % strains, dt 0.3 s)."""
    import torch

    from fe2nn.materials.registry import build_material

    mat = build_material(table, str(REPO / "demos" / "x.toml"))
    state = mat.initial_state(n)
    g = torch.Generator().manual_seed(0)
    eps = 1e-3 * torch.randn(n, 6, generator=g, dtype=torch.float64)
    times = []
    for _ in range(reps):
        mat.forget_last_update()  # each a step's first call (RVEs start later ones from the last call's solution)
        t0 = time.perf_counter()
        mat.update(eps, 0.3, state)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps (smoke run)")
    ap.add_argument("--grid", type=int, default=None, help="FFT voxels per side (default 16; 8 with --quick)")
    ap.add_argument("--grains", type=int, default=10, help="FFT grains")
    ap.add_argument("--skip-fft", action="store_true", help="only part A")
    ap.add_argument("--skip-j2", action="store_true", help="only part B")
    ap.add_argument("--device", default="cpu", help="where the surrogate runs in part A: cpu or cuda")
    ap.add_argument("--tangent-dtype", default=None, choices=["auto", "float32", "float64"],
                    help="precision of the surrogate's tangent in part A (default: the demo's, auto)")
    ap.add_argument("--surrogate", default=None,
                    help="surrogate directory to time (default: the main demo's, surrogates/aluminium_taylor_fast_w64)")
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args()
    args.grid = args.grid or (8 if args.quick else 16)
    from fe2nn.macro.run import load_config
    from test_fe2_util import bar_config, rno_table

    out = {"quick": args.quick, "device": args.device}
    demo = REPO / "demos" / "plate_hole_rno.toml"
    demo_material = load_config(demo).material
    surrogate = (Path(args.surrogate) if args.surrogate else demo.parent / demo_material["surrogate"]).resolve()
    sur_table = {**demo_material, "surrogate": str(surrogate)}
    out["surrogate"] = str(surrogate)
    j2 = {"model": "j2", "E": 70e9, "nu": 0.33, "sigma_y": 60e6, "H_iso": 0.5e9}
    steps = 4 if args.quick else None
    rows = []
    if not args.skip_j2:
        _run(demo, material=j2, steps=1)  # compiles the forms (JIT) outside the timed solves
        a_sur = _run(demo, material=sur_table, steps=steps, device=args.device, tangent_dtype=args.tangent_dtype)
        a_j2 = _run(demo, material=j2, steps=steps)
        out["A_surrogate_vs_j2"] = {"surrogate": a_sur, "j2": a_j2, "wall_ratio": a_sur["wall_s"] / a_j2["wall_s"]}
        rows = [(f"A: plate demo, RNO ({args.device})", a_sur), ("A: plate demo, J2", a_j2)]
    if not args.skip_fft:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            mesh = tmp / "bar12.msh"
            subprocess.run([sys.executable, str(REPO / "meshes" / "bar.py"), "--h", "1.0", "--out", str(mesh)],
                           check=True, capture_output=True)
            kw = dict(strain=4e-3, times=(0.0, 2.0), factors=(0.0, 1.0), steps=2 if args.quick else 4, mesh=mesh)
            fft = {"model": "rve", "solver": "fft", "material": "aluminium", "options": {"tol": 1e-6},
                   "microstructure": {"n_grains": args.grains, "grid": args.grid, "seed": 7}}
            b_sur = _run(bar_config(tmp / "s.toml", rno_table(surrogate), **kw))
            b_fft = _run(bar_config(tmp / "f.toml", fft, **kw))
        n_big = 4832  # points of the main demo
        per_pt_big = _update_cost(rno_table(surrogate), n_big) / n_big
        out["B_surrogate_vs_fft"] = {
            "surrogate_update_per_point_s_at_4832_points": per_pt_big,
            "speedup_per_point_evaluation_at_demo_batch": b_fft["per_point_eval_s"] / per_pt_big,
            "surrogate": b_sur, "fft": b_fft, "grid": args.grid, "grains": args.grains,
            "speedup_wall": b_fft["wall_s"] / b_sur["wall_s"],
            "speedup_per_point_evaluation": b_fft["per_point_eval_s"] / b_sur["per_point_eval_s"]}
        rows += [("B: 12-point bar, RNO", b_sur), (f"B: 12-point bar, FFT {args.grid}^3", b_fft)]
    print(f"{'case':28s} {'points':>7s} {'steps':>5s} {'its':>4s} {'max it':>6s} {'wall [s]':>9s} {'const [s]':>9s} "
          f"{'asm [s]':>8s} {'lin [s]':>8s} {'other [s]':>9s} {'per pt-eval [s]':>15s}")
    for name, r in rows:
        print(f"{name:28s} {r['points']:7d} {r['steps']:5d} {sum(r['iterations']):4d} {max(r['iterations']):6d} "
              f"{r['wall_s']:9.3f} {r['constitutive_s']:9.3f} {r['assembly_s']:8.3f} {r['solve_s']:8.3f} "
              f"{r['other_s']:9.3f} {r['per_point_eval_s']:15.3e}")
    if "A_surrogate_vs_j2" in out:
        print(f"A: surrogate / J2 wall time = {out['A_surrogate_vs_j2']['wall_ratio']:.2f} (target <= 1.5)")
    if "B_surrogate_vs_fft" in out:
        b = out["B_surrogate_vs_fft"]
        print(f"B: FFT / surrogate: whole solve {b['speedup_wall']:.0f}x, per point evaluation "
              f"{b['speedup_per_point_evaluation']:.0f}x at the same 12-point batch, "
              f"{b['speedup_per_point_evaluation_at_demo_batch']:.0f}x against the surrogate's cost per point "
              f"in a {n_big}-point batch ({per_pt_big:.2e} s) (target >= 1000)")
    if args.out:
        from fe2nn.io_utils import write_text_atomic

        write_text_atomic(args.out, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
