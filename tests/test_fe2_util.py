"""Shared helpers of the FE² tests (no tests here): configs on tiny meshes, the shipped surrogate."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SURROGATE = Path(os.environ.get("FE2NN_TEST_SURROGATE", REPO / "surrogates" / "aluminium_taylor"))
TINY_MESH = REPO / "meshes" / "bar_tiny.msh"  # 1 m x 0.2 m x 0.2 m, 80 tetrahedra (80 points at degree 1)
#: the RVE of the shipped surrogate's training data (surrogates/aluminium_taylor/generate.toml)
RVE_KEYS = {"solver": "taylor", "material": "aluminium", "microstructure": {"n_grains": 30, "grid": 32, "seed": 7}}

needs_surrogate = pytest.mark.skipif(not (SURROGATE / "card.json").is_file(),
                                     reason="shipped surrogate surrogates/aluminium_taylor not present yet")


def rno_table(path=SURROGATE, **extra) -> dict:
    """[material] of the surrogate, with the keys of the RVE it stands for (switch: model = "rve")."""
    return {"model": "rno", "surrogate": str(path), **RVE_KEYS, **extra}


TAYLOR = dict(rno_table(), model="rve")


def _toml_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def bar_config(path: Path, material: dict, strain: float = 2e-3, times=(0.0, 1.0), factors=(0.0, 1.0),
               steps: int | None = 4, out: str = "out", extra: str = "", mesh: Path = TINY_MESH,
               max_dt: float | None = None) -> Path:
    """A uniaxial bar (rollers on xmin/ymin/zmin, u_x = strain * 1 m on xmax) config written to ``path``."""
    stepping = f"steps = {steps}" if max_dt is None else f"max_dt = {max_dt!r}"
    mat = "\n".join(f"{k} = {_toml_value(v)}" for k, v in material.items())
    path.write_text(f"""
[mesh]
file = "{mesh}"
degree = 1

[material]
{mat}

[[dirichlet]]
boundary = "xmin"
x = 0.0
[[dirichlet]]
boundary = "ymin"
y = 0.0
[[dirichlet]]
boundary = "zmin"
z = 0.0
[[dirichlet]]
boundary = "xmax"
x = {strain!r}

[load]
times = {_toml_value(list(times))}
factors = {_toml_value(list(factors))}
{stepping}

[solver]
linear_solver = "direct"

[output]
dir = "{out}"
reaction = "xmax"
plot = false
{extra}
""")
    return path


def solve_in_process(cfg_path: Path, material=None, callback=None, max_iterations=None):
    """Run a bar config in this process (optionally with a given Material); returns solve()'s Result."""
    from mpi4py import MPI

    from fe2nn.config import resolve_path
    from fe2nn.macro.problem import read_mesh
    from fe2nn.macro.run import build_problem, load_config
    from fe2nn.macro.solver import solve
    from fe2nn.materials.registry import build_material

    cfg = load_config(cfg_path)
    mat = material if material is not None else build_material(cfg.material, str(cfg_path))
    mesh = read_mesh(resolve_path(cfg_path, cfg.mesh.file), MPI.COMM_SELF)
    return solve(build_problem(cfg, mesh, mat), cfg.load.times, cfg.load.factors, steps=cfg.load.steps,
                 max_dt=cfg.load.max_dt, reaction=cfg.output.reaction, linear_solver="direct", progress=False,
                 max_iterations=max_iterations or cfg.solver.max_iterations, callback=callback)


def reactions(path: Path):
    """Reaction force vectors (n_steps, 3) [N] of a solve's steps.csv, and its rows (dicts)."""
    import csv

    import numpy as np

    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r[f"reaction_{c}"]) for c in "xyz"] for r in rows]), rows
