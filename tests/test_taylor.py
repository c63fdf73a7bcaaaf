"""Taylor (iso-strain) RVE: Voigt bound, uniform texture, single-crystal limit, tangent, Hill-Mandel."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fe2nn.materials.base import MaterialConvergenceError
from fe2nn.micro.crystal import SingleCrystal, load_params
from fe2nn.micro.microstructure import Microstructure, random_quaternions
from fe2nn.micro.taylor import TaylorRVE
from fe2nn import mandel

AL = load_params("aluminium")


def quats(m, seed=0):
    return torch.from_numpy(random_quaternions(m, np.random.default_rng(seed)))


def rotated_cubic_mandel(p, q) -> torch.Tensor:
    """Independent rotation of the cubic 4th-order tensor, C'_ijkl = R_ia R_jb R_kc R_ld C_abcd."""
    C = torch.zeros(3, 3, 3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            C[i, i, j, j] = p.C12
            C[i, j, i, j] = C[i, j, j, i] = p.C44
        C[i, i, i, i] = p.C11
    R = mandel.quaternion_to_matrix(q)
    Cr = torch.einsum("gia,gjb,gkc,gld,abcd->gijkl", R, R, R, R, C)
    pairs, w = mandel.MANDEL_PAIRS, [1, 1, 1, math.sqrt(2), math.sqrt(2), math.sqrt(2)]
    return torch.stack([torch.stack([Cr[:, i, j, k, l] * w[a] * w[b] for b, (k, l) in enumerate(pairs)], -1)
                        for a, (i, j) in enumerate(pairs)], -2)


def test_elastic_taylor_stress_is_voigt_average():
    q = quats(7, seed=1)
    w = torch.tensor([1.0, 2.0, 3.0, 1.0, 0.5, 0.5, 2.0])
    rve = TaylorRVE(AL, q, weights=w)
    eps = torch.tensor([[2e-6, -1e-6, 0.5e-6, 1e-6, -2e-6, 0.3e-6], [-1e-6, 0, 1e-6, 0, 0, 2e-6]])
    s, T, st = rve.update(eps, 1.0, rve.initial_state(2))
    CV = torch.einsum("g,gij->ij", w / w.sum(), rotated_cubic_mandel(AL, q))
    # strains of 1e-6 give resolved stresses ~0.1 MPa << xi0: slip ~ (0.003)^20, purely elastic
    assert torch.allclose(s, eps @ CV.T, rtol=1e-10, atol=1e-6)
    assert torch.allclose(T, CV.expand(2, 6, 6), rtol=1e-10, atol=1e-3)


def test_random_texture_is_uniform_and_gives_isotropic_voigt_moduli():
    G = 4000
    q = quats(G, seed=2)
    R = mandel.quaternion_to_matrix(q)
    # E[R_ij] = 0 and Var[R_ij] = 1/3 on SO(3): the sample mean is within 5 standard errors
    assert R.mean(0).abs().max() < 5 * math.sqrt(1 / (3 * G))
    assert torch.allclose((R * R).mean(0), torch.full((3, 3), 1 / 3), atol=5 * math.sqrt(0.1 / G))
    CV = rotated_cubic_mandel(AL, q).mean(0)
    K = (AL.C11 + 2 * AL.C12) / 3
    mu = (AL.C11 - AL.C12 + 3 * AL.C44) / 5  # Voigt shear modulus of a random cubic aggregate
    iso = 3 * K * mandel.volumetric_projector() + 2 * mu * mandel.deviatoric_projector()
    # anisotropy (C11-C12-2C44)/5 ~ -2 GPa fluctuates as 1/sqrt(G): 1% of the moduli is ~10 sigma
    assert torch.allclose(CV, iso, atol=0.01 * mu)
    assert torch.allclose(mandel.trace(CV[:3]).sum() / 9, torch.tensor(K), rtol=1e-12)


def test_taylor_with_identical_grains_reproduces_single_crystal():
    q1 = quats(1, seed=3)
    rve = TaylorRVE(AL, q1.repeat(5, 1), weights=torch.tensor([1.0, 2, 3, 4, 5]))
    sc = SingleCrystal(AL, q1)
    D = torch.tensor([[3e-3, -1e-3, -1.5e-3, 1e-3, 0.0, 5e-4], [-2e-3, 2e-3, 0, 0, 1e-3, 0]])
    st_r, st_c = rve.initial_state(2), sc.initial_state(2)
    for k in range(1, 5):
        s_r, T_r, st_r = rve.update(D * k / 4, 0.5, st_r)
        s_c, T_c, st_c = sc.update(D * k / 4, 0.5, st_c)
        assert torch.allclose(s_r, s_c, rtol=1e-8, atol=1e-8 * s_c.abs().max())
        assert torch.allclose(T_r, T_c, rtol=1e-8, atol=1e-8 * T_c.abs().max())
    assert torch.allclose(st_r["p"], st_c["p"], rtol=1e-8)
    assert float(st_c["p"].min()) > 1e-3


def test_taylor_tangent_and_hill_mandel():
    rve = TaylorRVE(AL, quats(6, seed=4))
    n = 3
    g = torch.Generator().manual_seed(0)
    D = torch.randn(n, 6, generator=g, dtype=torch.float64) * 2e-3
    st = rve.initial_state(n)
    for k in (1, 2):
        _, _, st = rve.update(D * k / 2, 1.0, st)
        assert rve.info["hill_mandel"].max() < 1e-8
        assert rve.info["hill_mandel"].shape == (n,) and rve.info["iterations"].shape == (n,)
    assert st["p"].shape == (n,) and st["xi"].shape == (n, 6, 12) and float(st["p"].min()) > 1e-4
    strain = D * 1.2
    s, T, _ = rve.update(strain, 1.0, st)
    h = 1e-8
    Tfd = torch.zeros_like(T)
    for j in range(6):
        d = torch.zeros(6, dtype=torch.float64)
        d[j] = h
        Tfd[:, :, j] = (rve.update(strain + d, 1.0, st)[0] - rve.update(strain - d, 1.0, st)[0]) / (2 * h)
    err = (T - Tfd).norm(dim=(1, 2)) / Tfd.norm(dim=(1, 2))
    assert err.max() < 1e-5


def test_from_microstructure_uses_volume_fractions():
    ms = Microstructure.voronoi(6, 8, seed=5)
    rve = TaylorRVE.from_microstructure(ms, AL)
    assert torch.allclose(rve.weights, ms.grain_fractions()[ms.grain_fractions() > 0])
    assert rve.n_grains == int((ms.grain_fractions() > 0).sum())


def test_taylor_bad_input_and_failure_mask():
    with pytest.raises(ValueError, match="one value per grain"):
        TaylorRVE(AL, quats(3), weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        TaylorRVE(AL, quats(2), weights=[1.0, -1.0])
    rve = TaylorRVE(AL, quats(3), max_iter=1, max_substeps=1)
    strain = torch.tensor([[1e-8, 0, 0, 0, 0, 0], [5e-2, 0, -5e-2, 0, 0, 0]])
    with pytest.raises(MaterialConvergenceError) as err:
        rve.update(strain, 1e-6, rve.initial_state(2))
    assert err.value.failed.tolist() == [False, True]
