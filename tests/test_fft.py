"""FFT RVE (fe2nn.micro.fft): closed-form laminate, bounds and grid convergence of elastic
polycrystals, single-crystal limit, FD tangent, Hill-Mandel, mixed control, failures, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fe2nn import mandel
from fe2nn.materials.base import MaterialConvergenceError
from fe2nn.micro.crystal import SingleCrystal, load_params
from fe2nn.micro.fft import FFTRVE, uniaxial_stress_path
from fe2nn.micro.microstructure import Microstructure
from fe2nn.micro.voxel_elastic import VoxelElastic

# copper: Zener anisotropy 2 C44 / (C11 - C12) = 3.2
CU = (168.4e9, 121.4e9, 75.4e9)


def laminate_stiffness(C_phases, fractions):
    """Exact stiffness of a laminate with layers normal to x1 (Mandel, numpy).

    In-plane strains (Mandel 1, 2, 3: e22, e33, e23) are uniform (compatibility), the
    tractions on the layer planes (Mandel 0, 4, 5: s11, s13, s12) are uniform (equilibrium).
    """
    n, p = [0, 4, 5], [1, 2, 3]
    C_phases = [np.asarray(C) for C in C_phases]
    A = sum(f * np.linalg.inv(C[np.ix_(n, n)]) for C, f in zip(C_phases, fractions))
    Ainv = np.linalg.inv(A)
    Chom = np.zeros((6, 6))
    for j in range(6):
        E = np.zeros(6)
        E[j] = 1.0
        En, Ep = E[n], E[p]
        # E_n = A S_n - sum f Cnn^-1 Cnp E_p
        Sn = Ainv @ (En + sum(f * np.linalg.solve(C[np.ix_(n, n)], C[np.ix_(n, p)] @ Ep)
                              for C, f in zip(C_phases, fractions)))
        S = np.zeros(6)
        S[n] = Sn
        for C, f in zip(C_phases, fractions):
            en = np.linalg.solve(C[np.ix_(n, n)], Sn - C[np.ix_(n, p)] @ Ep)
            S[p] += f * (C[np.ix_(p, n)] @ en + C[np.ix_(p, p)] @ Ep)
        Chom[:, j] = S
    return Chom


@pytest.mark.parametrize("grid, n_b", [((9, 3, 3), 4), ((15, 2, 1), 7), ((8, 2, 4), 3)])
def test_laminate_matches_closed_form(grid, n_b):
    CA = mandel.isotropic_stiffness(70e9, 0.33)
    CB = mandel.isotropic_stiffness(700e9, 0.2)
    ids = torch.zeros(grid, dtype=torch.long)
    ids[:n_b] = 1
    rve = FFTRVE(VoxelElastic.from_phases(ids, torch.stack([CA, CB])), grid, tangent_tol=1e-12)
    C = rve.initial_tangent().numpy()
    f_b = n_b / grid[0]
    ref = laminate_stiffness([CA.numpy(), CB.numpy()], [1 - f_b, f_b])
    assert np.abs(C - ref).max() <= 1e-6 * np.abs(ref).max()
    # the closed form is neither the Voigt nor the Reuss average
    voigt = (1 - f_b) * CA.numpy() + f_b * CB.numpy()
    assert np.abs(voigt - ref).max() > 0.05 * np.abs(ref).max()
    # strain-controlled update gives the same stress
    E = torch.tensor([[1e-3, -2e-4, 3e-4, 1e-4, -5e-4, 2e-4]])
    stress, tangent, _ = rve.update(E, 1.0, rve.initial_state(1))
    assert np.allclose(stress[0].numpy(), ref @ E[0].numpy(), rtol=0, atol=1e-7 * np.abs(ref @ E[0].numpy()).max())


def _polycrystal(n, seed=3, n_grains=10):
    # Microstructure.voronoi draws the seeds independently of the grid: one geometry, 3 grids
    ms = Microstructure.voronoi(n_grains, n, seed=seed)
    return ms.grain_ids, VoxelElastic.cubic_polycrystal(*CU, ms.voxel_orientations())


def test_elastic_polycrystal_between_bounds_and_converges():
    Cs = {}
    for n in (8, 16, 32):
        _, mat = _polycrystal(n)
        C = FFTRVE(mat, (n, n, n), tangent_tol=1e-10).initial_tangent()
        assert torch.allclose(C, C.T, rtol=0, atol=1e-7 * C.abs().max())
        voigt = mat.C.mean(0)
        reuss = torch.linalg.inv(torch.linalg.inv(mat.C).mean(0))
        tol = 1e-9 * C.abs().max()
        # Loewner order Reuss <= C_fft <= Voigt (both are exact bounds of the voxel cell)
        assert torch.linalg.eigvalsh(voigt - C).min() >= -tol
        assert torch.linalg.eigvalsh(C - reuss).min() >= -tol
        # cubic crystals share one bulk modulus: a uniform dilatation is the exact solution
        bulk = float(C[:3, :3].sum()) / 9.0
        assert abs(bulk - (CU[0] + 2 * CU[1]) / 3) <= 1e-9 * bulk
        # and strictly inside for this anisotropic copper aggregate
        assert torch.linalg.eigvalsh(voigt - C).max() > 1e-3 * C.abs().max()
        assert torch.linalg.eigvalsh(C - reuss).max() > 1e-3 * C.abs().max()
        Cs[n] = C
    d1 = (Cs[16] - Cs[8]).norm()
    d2 = (Cs[32] - Cs[16]).norm()
    assert d2 < 0.75 * d1


def test_single_orientation_rve_reproduces_single_crystal():
    q = torch.tensor([[0.9, 0.3, -0.2, 0.25]])
    q = q / q.norm()
    params = load_params("aluminium")
    grid = (3, 4, 2)
    nv = 24
    crystal = SingleCrystal(params, q)
    rve = FFTRVE(SingleCrystal(params, q.expand(nv, 4)), grid, tol=1e-10)
    sc, st = crystal.initial_state(2), rve.initial_state(2)
    d = torch.tensor([[1.0, -0.4, -0.6, 0.2, 0.1, -0.3], [-0.5, 1.0, -0.5, 0.0, 0.6, 0.0]])
    for i in range(1, 5):
        E = 1.5e-3 * i * d
        s1, C1, sc = crystal.update(E, 0.5, sc)
        s2, C2, st = rve.update(E, 0.5, st)
        assert torch.allclose(s2, s1, rtol=0, atol=1e-8 * s1.abs().max())
        assert torch.allclose(C2, C1, rtol=0, atol=1e-8 * C1.abs().max())
        assert torch.allclose(st["p"], sc["p"], rtol=1e-8, atol=1e-14)
    assert float(sc["p"].min()) > 1e-3  # plastic


def _plastic_rve(**kw):
    # 4 grains on 4^3 voxels; the crystal law is built from the parameters and orientations
    return FFTRVE(load_params("aluminium"), Microstructure.voronoi(4, 4, seed=1), **kw)


def test_tangent_matches_finite_differences_in_plastic_state():
    rve = _plastic_rve(tol=1e-11, tangent_tol=1e-10)
    st = rve.initial_state(1)
    d = torch.tensor([[1.0, -0.3, -0.5, 0.2, 0.0, 0.1]])
    for i in range(1, 3):
        _, _, st = rve.update(1.5e-3 * i * d, 0.5, st)
    E = 4.5e-3 * d
    _, C, new = rve.update(E, 0.5, st)
    assert float(new["p"][0]) > 1e-3
    assert float(rve.info["hill_mandel"][0]) < 1e-8
    h = 1e-6
    fd = torch.zeros(6, 6)
    for j in range(6):
        dE = torch.zeros(1, 6)
        dE[0, j] = h
        sp, _, _ = rve.update(E + dE, 0.5, st)
        sm, _, _ = rve.update(E - dE, 0.5, st)
        fd[:, j] = (sp - sm)[0] / (2 * h)
    err = (C[0] - fd).norm() / fd.norm()
    assert err < 1e-5, float(err)
    # plastic tangent is far from the elastic one
    assert (C[0] - rve.initial_tangent()).norm() > 0.1 * fd.norm()


def test_uniaxial_stress_path_hill_mandel_and_lateral_stresses():
    rve = _plastic_rve(tol=1e-9)
    out = uniaxial_stress_path(rve, component=0, strain_rate=1e-3, max_strain=0.006, n_steps=4)
    S = out["stress"][:, 0]
    assert S.shape == (5, 6)
    assert torch.all(S[1:, 0] > 30e6)
    # lateral / shear macro stresses vanish (mixed control), to the solver tolerance
    assert torch.all(S[1:, 1:].abs() <= 1e-8 * S[1:, 0:1].abs())
    # lateral contraction, plastic flow, Hill-Mandel
    assert torch.all(out["strain"][1:, 0, 1] < 0) and torch.all(out["strain"][1:, 0, 2] < 0)
    assert float(out["p"][-1, 0]) > 1e-3
    assert float(out["hill_mandel"].max()) < 1e-8
    assert torch.all(out["newton_iterations"] >= 1) and torch.all(out["cg_iterations"] >= 1)


def test_mixed_control_elastic_crystal_matches_directional_modulus():
    q = torch.tensor([[0.9, 0.3, -0.2, 0.25]])
    q = q / q.norm()
    mat = VoxelElastic.cubic_polycrystal(*CU, q.expand(8, 4))
    rve = FFTRVE(mat, (2, 2, 2), tol=1e-10)
    mask = torch.tensor([False, True, True, True, True, True])
    E = torch.tensor([[1e-3, 0, 0, 0, 0, 0]])
    stress, C, _, strain = rve.update_mixed(E, torch.zeros(1, 6), mask, 1.0, rve.initial_state(1))
    S = torch.linalg.inv(mat.C[0])
    assert abs(float(stress[0, 0]) - 1e-3 / float(S[0, 0])) <= 1e-8 * abs(float(stress[0, 0]))
    assert torch.allclose(strain[0], S[:, 0] * stress[0, 0], rtol=0, atol=1e-12)
    # no load at all: converged at once, zero stress and strain
    stress0, _, _, strain0 = rve.update_mixed(torch.zeros(1, 6), torch.zeros(1, 6), mask, 1.0,
                                              rve.initial_state(1))
    assert float(stress0.abs().max()) == 0.0 and float(strain0.abs().max()) == 0.0
    assert int(rve.info["newton_iterations"][0]) == 0


def test_non_convergence_raises_with_mask_and_no_nan():
    rve = _plastic_rve(max_newton=1)
    st = rve.initial_state(2)
    # RVE 0: large plastic increment, cannot converge in one Newton correction;
    # RVE 1: no load, converged at the initial guess
    E = torch.tensor([[5e-3, -2.5e-3, -2.5e-3, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    with pytest.raises(MaterialConvergenceError) as exc:
        rve.update(E, 1.0, st)
    assert exc.value.failed is not None
    assert exc.value.failed.tolist() == [True, False]
    rve2 = _plastic_rve(max_cg=1)
    with pytest.raises(MaterialConvergenceError):
        rve2.update(E[:1], 1.0, rve2.initial_state(1))


class _BrittleElastic(VoxelElastic):
    """Elastic voxels whose 'local solver' fails above a strain magnitude (test double)."""

    def update(self, strain, dt, state):
        bad = strain.abs().amax(1) > 1e-2
        if bool(bad.any()):
            raise MaterialConvergenceError("local failure", failed=bad)
        return super().update(strain, dt, state)


def test_voxel_failure_is_reported_per_rve():
    mat = _BrittleElastic(mandel.isotropic_stiffness(70e9, 0.3).expand(8, 6, 6))
    rve = FFTRVE(mat, (2, 2, 2))
    E = torch.tensor([[1e-3, 0, 0, 0, 0, 0], [2e-2, 0, 0, 0, 0, 0], [3e-3, 0, 0, 0, 0, 0]])
    with pytest.raises(MaterialConvergenceError) as exc:
        rve.update(E, 1.0, rve.initial_state(3))
    assert exc.value.failed.tolist() == [False, True, False]


def test_batch_equals_one_by_one():
    rve = _plastic_rve(tol=1e-9)
    E = torch.tensor([[3e-3, -1e-3, -1e-3, 0, 0, 0], [0, 2e-3, 0, 1e-3, 0, 0],
                      [-1e-3, 0, 0, 0, 0, 2e-3]])
    sb, Cb, stb = rve.update(E, 0.5, rve.initial_state(3))
    itb = rve.info["newton_iterations"].clone()
    for b in range(3):
        s1, C1, st1 = rve.update(E[b:b + 1], 0.5, rve.initial_state(1))
        assert torch.allclose(sb[b], s1[0], rtol=0, atol=1e-10 * s1.abs().max())
        assert torch.allclose(Cb[b], C1[0], rtol=0, atol=1e-10 * C1.abs().max())
        assert torch.allclose(stb["p"][b], st1["p"][0], rtol=1e-10, atol=1e-16)
        assert int(itb[b]) == int(rve.info["newton_iterations"][0])


def test_batch_equals_one_by_one_with_kept_substeps():
    """A voxel law that keeps its last update (the crystal's sticky substeps) is evaluated on every
    cell of the batch in each Newton iteration, so that what it keeps stays matched to its points
    while the cells converge at different iterations. Copper under error control (substeps, so the
    kept partition matters): each cell of a batch of three gives its answer alone, to round-off
    (evaluated on the unconverged cells only, they differed by 2e-4 in stress and 1e-3 in tangent,
    with more Newton iterations). ``forget_last_update`` between the single cells: cells from the
    same virgin state and step would otherwise take over one another's substeps."""
    rve = FFTRVE(load_params("copper"), Microstructure.voronoi(4, 4, seed=1), tol=1e-10, substep_tol=1e-3)
    d = torch.tensor([[1.0, -0.35, -0.35, 0, 0, 0], [0.14, 0.7, -0.42, 0.35, 0, 0], [-0.2, 0, 0.2, 0, 0, 0.5]],
                     dtype=torch.float64)
    E, dt = 5e-4 / 6 * d, 0.25 / 6  # a sixth of the copper bar's first step
    sb, Cb, stb = rve.update(E, dt, rve.initial_state(3))
    itb = rve.info["newton_iterations"].clone()
    assert len(set(itb.tolist())) > 1  # the cells converge at different iterations
    assert rve.voxel._partition["dt"].shape == (3 * rve.n_voxels,)  # kept for the whole batch
    assert int(rve.voxel.info["substeps"].max()) > 8
    for b in range(3):
        rve.forget_last_update()
        s1, C1, st1 = rve.update(E[b:b + 1], dt, rve.initial_state(1))
        assert torch.allclose(sb[b], s1[0], rtol=0, atol=1e-12 * s1.abs().max())
        assert torch.allclose(Cb[b], C1[0], rtol=0, atol=1e-12 * C1.abs().max())
        assert int(itb[b]) == int(rve.info["newton_iterations"][0])


def test_bad_input():
    mat = VoxelElastic(mandel.isotropic_stiffness(1e9, 0.3).expand(8, 6, 6))
    with pytest.raises(ValueError, match="grid"):
        FFTRVE(mat, (0, 2, 4))
    with pytest.raises(ValueError, match="grid"):
        FFTRVE(mat, (2, 4))
    with pytest.raises(ValueError, match="tol"):
        FFTRVE(mat, (2, 2, 2), tol=0.0)
    with pytest.raises(ValueError, match="cg_tol"):
        FFTRVE(mat, (2, 2, 2), cg_tol=-1e-3)
    with pytest.raises(ValueError, match="max_newton"):
        FFTRVE(mat, (2, 2, 2), max_newton=0)
    with pytest.raises(ValueError, match="voxels"):
        FFTRVE(mat, (2, 2, 3))
    with pytest.raises(ValueError, match="substep_tol.*voxel material"):
        FFTRVE(mat, (2, 2, 2), substep_tol=1e-3)
    rve = FFTRVE(mat, (2, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        rve.update(torch.zeros(1, 3), 1.0, rve.initial_state(1))
    with pytest.raises(ValueError, match="RVEs"):
        rve.update(torch.zeros(2, 6), 1.0, rve.initial_state(1))


def test_crystal_error_control_reaches_the_voxels():
    """``substep_tol`` of an RVE built from crystal parameters is its voxels' error control. A cell of
    one copper grain under a uniform strain is that grain: on the copper bar's first step (the grain
    whose one-step backward Euler lands on the spurious root, 2.6 % from the step-converged stress)
    the cell gives the single crystal's stress and tangent with the same setting, so error control
    rejects that root here too."""
    from test_crystal import _copper_grains, _step_converged

    mat, strain, dt, st, _ = _copper_grains()
    ref = _step_converged(mat, strain, dt, st)
    worst = int(((SingleCrystal(mat.params, mat.orientations).update(strain, dt, st)[0] - ref).norm(dim=1)
                 / ref.norm(dim=1)).argmax())
    q, E, ref = mat.orientations[worst:worst + 1], strain[worst:worst + 1], ref[worst]
    one_grain = Microstructure(torch.zeros((2, 2, 2), dtype=torch.int64), q)
    err = {}
    for tol in (0.0, 1e-2, 1e-3):
        rve = FFTRVE(mat.params, one_grain, tol=1e-10, substep_tol=tol)
        assert rve.voxel.substep_tol == tol
        s, C, _ = rve.update(E, dt, rve.initial_state(1))
        crystal = SingleCrystal(mat.params, q, substep_tol=tol)
        sc, Cc, _ = crystal.update(E, dt, crystal.initial_state(1))
        assert torch.allclose(s, sc, rtol=0, atol=1e-12 * float(sc.abs().max()))
        assert torch.allclose(C[0], Cc[0], rtol=0, atol=1e-12 * float(Cc.abs().max()))
        err[tol] = float((s[0] - ref).norm() / ref.norm())
    assert err[0.0] > 2e-2 and err[1e-2] < 1e-2 and err[1e-3] < 0.5 * err[1e-2], err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    ms = Microstructure.voronoi(4, 4, seed=1)
    E = torch.tensor([[3e-3, -1e-3, -1e-3, 0, 0, 0], [0, 2e-3, 0, 1e-3, 0, 0]])
    out = {}
    for dev in ("cpu", "cuda"):
        rve = FFTRVE(load_params("aluminium"), ms, tol=1e-9, device=dev)
        s, C, st = rve.update(E.to(dev), 0.5, rve.initial_state(2))
        out[dev] = (s.cpu(), C.cpu(), st["p"].cpu())
    for a, b in zip(out["cpu"], out["cuda"]):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-7 * float(a.abs().max()))
