"""Thick-walled sphere (a = 1, b = 2) under internal pressure, elastic-perfectly plastic J2.

One octant with symmetry conditions, P2 displacement; the inner surface is driven
by a radial displacement delta * x/|x| and the pressure is read from the internal
forces as the work-conjugate of delta: p = sum_inner F.x_hat / (pi a^2 / 2).

Checks against closed forms: the elastic (Lame) stiffness, the perfectly plastic
limit pressure 2 sigma_y ln(b/a), and quadratic convergence of Newton with the
consistent tangent while the plastic zone spreads.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import REPO

A, B, E, NU, SY = 1.0, 2.0, 200e9, 0.3, 250e6
P_ELASTIC = 2 * SY / 3 * (1 - A**3 / B**3)  # first yield at r = a
U_ELASTIC = P_ELASTIC * A / E * ((1 - 2 * NU) * A**3 + (1 + NU) * B**3 / 2) / (B**3 - A**3)
P_LIMIT = 2 * SY * math.log(B / A)


@pytest.fixture(scope="module")
def sphere_run():
    from mpi4py import MPI  # noqa: F401
    from dolfinx import fem

    from fe2nn.macro import Problem, read_mesh, solve
    from fe2nn.materials.j2 import J2Plasticity

    mesh = read_mesh(REPO / "meshes" / "sphere_shell.msh")
    prob = Problem(mesh, J2Plasticity(E, NU, SY), degree=2)
    prob.fix("xsym", x=0.0).fix("ysym", y=0.0).fix("zsym", z=0.0)
    prob.fix("inner", function=lambda x: U_ELASTIC * x / np.linalg.norm(x, axis=0))
    history = []

    def pressure(solver, rec):
        nodes = fem.locate_dofs_topological(solver.V, 2, mesh.facets("inner"))
        nodes = nodes[nodes < solver.V.dofmap.index_map.size_local]
        x = solver.V.tabulate_dof_coordinates()[nodes]
        f = solver.f_int.reshape(-1, 3)[nodes]
        work = solver.comm.allreduce(float((f * x / np.linalg.norm(x, axis=1)[:, None]).sum()))
        history.append((rec.factor, work / (math.pi * A**2 / 2), rec.residuals, rec.reference))

    # predictor "none": every step starts a full load increment away, so the convergence
    # test below sees the residual fall over many orders of magnitude
    solve(prob, times=[0.0, 1.0, 12.0], factors=[0.0, 1.0, 12.0], max_dt=2.75, rtol=1e-10,
          linear_solver="direct", progress=False, callback=pressure, predictor="none")
    return history


def test_elastic_stiffness_matches_lame(sphere_run):
    factor, p, _, _ = sphere_run[0]
    assert factor == pytest.approx(1.0)
    assert p == pytest.approx(P_ELASTIC, rel=0.01)


def test_limit_pressure_of_perfectly_plastic_sphere(sphere_run):
    pressures = np.array([h[1] for h in sphere_run])
    assert np.all(np.diff(pressures) > 0), "pressure must rise monotonically to the limit"
    assert pressures[-1] == pytest.approx(P_LIMIT, rel=0.02)
    assert pressures[-1] - pressures[-2] < 0.02 * P_LIMIT  # on the plateau


def test_newton_converges_quadratically_in_plastic_steps(sphere_run):
    """r_{k+1} <= C r_k^2 / |F| with one modest C over every plastic step (a linearly
    converging Newton, e.g. with the elastic tangent, has r_{k+1}/r_k^2 growing like 1/r_k)."""
    ratios, spans = [], []
    for _, _, res, ref in sphere_run[1:]:
        r = np.array(res[1:])  # from the first equilibrium iteration on
        above = r[r > 1e-12 * ref]  # above the round-off floor of the force residual
        assert len(res) - 1 <= 6, f"too many Newton iterations: {res}"
        ratios += list(above[1:] / above[:-1] ** 2 * ref)
        spans.append(above[0] / above[-1])
    assert min(spans) > 1e5, "the residual must fall by orders of magnitude above the round-off floor"
    assert len(ratios) >= 8
    assert max(ratios) < 100.0, ratios
