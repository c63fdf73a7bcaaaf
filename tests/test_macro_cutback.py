"""Cut-backs roll the state back exactly: a run that fails and retries with smaller steps
ends where a run taking those same steps directly ends."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO


def _problem(material_class=None):
    from mpi4py import MPI  # noqa: F401

    from fe2nn.macro import Problem, read_mesh
    from fe2nn.materials.j2 import J2Plasticity

    mesh = read_mesh(REPO / "meshes" / "plate_hole.msh")
    prob = Problem(mesh, (material_class or J2Plasticity)(70e9, 0.33, 250e6, H_iso=1e9, H_kin=2e9), degree=1)
    return prob.fix("xsym", x=0.0).fix("ysym", y=0.0).fix("zsym", z=0.0).fix("top", y=0.8e-3)


def test_cut_back_steps_equal_direct_steps():
    from fe2nn.macro import solve

    cut = solve(_problem(), times=[0.0, 1.0], factors=[0.0, 1.0], steps=1, max_iterations=6, rtol=1e-10,
                reaction="top", progress=False, linear_solver="direct")
    assert any(s.cutbacks > 0 for s in cut.steps), "the big step must have been cut back"
    assert 3 <= len(cut.steps) <= 30
    # each record's count of material updates (and its times) includes the failed attempts before it:
    # a failed attempt makes at least 4 (divergence is declared after 3 iterations at the earliest)
    for s in cut.steps:
        assert s.evaluations >= s.iterations + 1 + 4 * s.cutbacks, (s.step, s.evaluations, s.iterations)
    assert sum(s.evaluations for s in cut.steps) == cut.solver.evaluations
    times = np.concatenate([[0.0], cut.times])
    direct = solve(_problem(), times=times, factors=times, max_dt=1.0, max_iterations=25, rtol=1e-10,
                   reaction="top", progress=False, linear_solver="direct")
    np.testing.assert_allclose(direct.times, cut.times, rtol=0, atol=1e-14)
    assert all(s.cutbacks == 0 for s in direct.steps)
    # one update per iterate (the first included), and one per line-search trial
    assert all(s.evaluations >= s.iterations + 1 for s in direct.steps)
    assert sum(s.evaluations for s in cut.steps) > sum(s.evaluations for s in direct.steps)
    scale = np.abs(direct.reactions).max()
    np.testing.assert_allclose(cut.reactions, direct.reactions, rtol=0, atol=1e-9 * scale)
    p_cut = cut.solver.state["p"].numpy()
    p_dir = direct.solver.state["p"].numpy()
    assert p_dir.max() > 1e-3  # plastic
    np.testing.assert_allclose(p_cut, p_dir, rtol=0, atol=1e-9 * p_dir.max())


def test_extrapolating_predictor_same_answer_fewer_iterations():
    """The predictor only changes the start of Newton: the same steps converge to the same
    equilibria (plastic J2 plate, loading then unloading), with fewer iterations in total."""
    from fe2nn.macro import solve

    kw = dict(times=[0.0, 1.0, 1.5], factors=[0.0, 1.0, 0.4], steps=8, rtol=1e-10, reaction="top",
              progress=False, linear_solver="direct")
    none = solve(_problem(), predictor="none", **kw)
    extra = solve(_problem(), predictor="extrapolate", **kw)
    np.testing.assert_allclose(extra.times, none.times, rtol=0, atol=1e-14)
    assert all(s.cutbacks == 0 for s in none.steps + extra.steps)
    scale = np.abs(none.reactions).max()
    np.testing.assert_allclose(extra.reactions, none.reactions, rtol=0, atol=1e-8 * scale)
    p_none, p_extra = none.solver.state["p"].numpy(), extra.solver.state["p"].numpy()
    assert p_none.max() > 1e-3  # plastic
    np.testing.assert_allclose(p_extra, p_none, rtol=0, atol=1e-8 * p_none.max())
    its_none = sum(s.iterations for s in none.steps)
    its_extra = sum(s.iterations for s in extra.steps)
    assert its_extra < its_none, (its_extra, its_none)


def test_unknown_predictor_is_rejected():
    import pytest

    from fe2nn.macro import solve

    with pytest.raises(ValueError, match="predictor"):
        solve(_problem(), predictor="quadratic", progress=False)


def test_tangent_only_where_newton_needs_it(monkeypatch):
    """A material that leaves its tangent for later (as the RNO surrogate does) gets asked for it
    once per Newton correction, never at a converged state, and the run (cut-backs included)
    is bit-identical to the one with the tangent computed with every stress."""
    from fe2nn.macro import solve
    from fe2nn.macro.solver import NewtonSolver
    from fe2nn.materials.j2 import J2Plasticity

    calls = {"tangent": 0, "stress": 0, "newton": 0}

    class LazyJ2(J2Plasticity):
        def stress_update(self, strain, dt, state):
            calls["stress"] += 1
            stress, new_state, _ = super().stress_update(strain, dt, state)
            return stress, new_state, None

        def tangent(self, strain, dt, state):
            calls["tangent"] += 1
            return super().tangent(strain, dt, state)

    original = NewtonSolver.newton_update

    def counted(self, first):
        calls["newton"] += 1
        return original(self, first)

    monkeypatch.setattr(NewtonSolver, "newton_update", counted)
    kw = dict(times=[0.0, 1.0], factors=[0.0, 1.0], steps=1, max_iterations=6, rtol=1e-10, reaction="top",
              progress=False, linear_solver="direct")
    eager = solve(_problem(), **kw)
    calls.update(tangent=0, stress=0, newton=0)
    lazy = solve(_problem(LazyJ2), **kw)
    assert any(s.cutbacks > 0 for s in lazy.steps)
    np.testing.assert_array_equal(lazy.reactions, eager.reactions)
    np.testing.assert_array_equal(lazy.solver.u.x.array, eager.solver.u.x.array)
    assert calls["tangent"] == calls["newton"] > 0
    assert calls["stress"] - calls["tangent"] >= len(lazy.steps)  # no tangent at the converged states


def test_failure_diagnosis_counts_softening_and_out_of_envelope_points():
    _diagnosis_check()


def test_failure_diagnosis_on_two_ranks():
    """The same counts (all ranks summed) on 2 MPI ranks."""
    from conftest import run_python_mpi

    run_python_mpi(2, "-c", "import sys; sys.path.insert(0, 'tests'); import test_macro_cutback as t; "
                   "t._diagnosis_check()", cwd=REPO)


def _diagnosis_check():
    """``NewtonSolver.diagnose`` (appended to the error of a step that fails for good) counts the
    points whose tangent is not positive definite and those a material flags as outside its
    envelope.  Material: sigma = E eps - c <eps11 - e0>^2 e1 (nu = 0), whose tangent
    E I - 2 c <eps11 - e0> e1 e1 loses positive definiteness past eps11 = e0 + E / (2 c) = 1.5e-3;
    it flags eps11 > 2e-3 as out of its envelope.  The bar (x in [0, 10]) gets ux = a x^2, so
    eps11 = 2 a x varies along it and the expected counts follow from the point strains."""
    from mpi4py import MPI

    from conftest import softening_material
    from fe2nn.macro import Problem, read_mesh
    from fe2nn.macro.solver import NewtonSolver

    E, c, e0 = 1e9, 1e12, 1e-3
    mesh = read_mesh(REPO / "meshes" / "bar.msh")
    solver = NewtonSolver(Problem(mesh, softening_material(E, c, e0, far=2e-3), degree=2).fix("xmin", x=0.0))
    x = mesh.mesh.geometry.x
    length = mesh.mesh.comm.allreduce(float(x[:, 0].max()), op=MPI.MAX)
    a = 2.5e-3 / (2 * length)  # eps11 from 0 to 2.5e-3
    solver.u.interpolate(lambda p: np.stack([a * p[0] ** 2, 0 * p[0], 0 * p[0]]))
    solver.evaluate_material(1.0)
    e11 = solver.qf.strain()[:, 0]
    total = mesh.mesh.comm.allreduce(e11.size)
    soft = mesh.mesh.comm.allreduce(int(np.count_nonzero(e11 > e0 + E / (2 * c))))
    far = mesh.mesh.comm.allreduce(int(np.count_nonzero(e11 > 2e-3)))
    assert 0 < far < soft < total
    why = solver.diagnose()
    assert f"{far} of {total} points outside the surrogate's training envelope (strain {far}, rate 0, path 0)" in why
    assert f"{soft} of {total} points with a tangent that is not positive definite" in why
    solver.u.x.array[:] = 0.0  # unstrained: nothing to report
    solver.evaluate_material(1.0)
    assert solver.diagnose() == ""


@pytest.mark.parametrize("steps, max_dt", [(4, None), (None, 0.7), (None, None)])
def test_substeps_split_every_nominal_step_into_equal_steps(steps, max_dt):
    """LoadTable.step_times(..., substeps=3): the nominal times are kept exactly and each nominal step
    is cut into three equal ones (segments of unequal length, so not the same as 3 x the steps)."""
    from fe2nn.macro.loading import LoadTable

    table = LoadTable([0.0, 2.0, 3.0], [0.0, 1.0, 0.5])
    coarse = table.step_times(steps, max_dt)
    fine = table.step_times(steps, max_dt, substeps=3)
    assert len(fine) == 3 * len(coarse) and fine[2::3] == coarse
    dt = np.diff([0.0] + fine).reshape(-1, 3)
    np.testing.assert_allclose(dt, dt[:, :1].repeat(3, axis=1), rtol=1e-12)
    np.testing.assert_allclose(dt.sum(axis=1), np.diff([0.0] + coarse), rtol=1e-12)
