"""Patch test: an affine displacement prescribed on the whole boundary must give the
prescribed (constant) strain at every quadrature point, P1/P2 tetrahedra and
Q1/Q2 hexahedra, and the elastic stress C : eps there."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO

GRAD = np.array([[1.0e-3, 2.0e-4, -3.0e-4],
                 [-1.0e-4, -5.0e-4, 4.0e-4],
                 [6.0e-4, 1.5e-4, 2.5e-4]])  # displacement gradient [-]


@pytest.mark.parametrize("mesh_file,degree", [("bar.msh", 1), ("bar.msh", 2), ("bar_hex.msh", 1), ("bar_hex.msh", 2)])
def test_affine_displacement_gives_exact_strain_and_stress(mesh_file, degree):
    from mpi4py import MPI  # noqa: F401

    from fe2nn import mandel
    from fe2nn.macro import Problem, read_mesh, solve
    from fe2nn.materials.elastic import LinearElastic

    E, nu = 70e9, 0.33
    mesh = read_mesh(REPO / "meshes" / mesh_file)
    prob = Problem(mesh, LinearElastic(E, nu), degree=degree)
    for face in ("xmin", "xmax", "ymin", "ymax", "zmin", "zmax"):
        prob.fix(face, function=lambda x: GRAD @ x)
    res = solve(prob, times=[0.0, 1.0], factors=[0.0, 1.0], steps=1, rtol=1e-12, progress=False)
    s = res.solver
    eps_ref = mandel.to_mandel(__import__("torch").tensor(0.5 * (GRAD + GRAD.T))).numpy()
    strain = s.qf.strain()
    assert strain.shape == (s.qf.n_points, 6)
    assert np.abs(strain - eps_ref).max() <= 1e-10 * np.abs(eps_ref).max()
    sig_ref = mandel.isotropic_stiffness(E, nu).numpy() @ eps_ref
    stress = s.qf.view(s.qf.stress)
    assert np.abs(stress - sig_ref).max() <= 1e-10 * np.abs(sig_ref).max()
    # a real patch: interior dofs exist and were solved for
    assert s.comm.allreduce(int((~s.bc_mask).sum())) > 0
    assert res.steps[-1].iterations >= 1
