"""Material-point checks of the elastic and J2 laws against closed-form solutions."""
import math

import pytest
import torch

from fe2nn import mandel
from fe2nn.materials.drivers import fd_tangent, uniaxial_stress
from fe2nn.materials.elastic import LinearElastic
from fe2nn.materials.j2 import J2Plasticity

E, NU, SY = 200e9, 0.3, 250e6


def test_mandel_round_trip_and_work_conjugacy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, 3, generator=g)
    b = torch.randn(5, 3, 3, generator=g)
    a, b = a + a.transpose(1, 2), b + b.transpose(1, 2)
    am, bm = mandel.to_mandel(a), mandel.to_mandel(b)
    assert torch.allclose(mandel.from_mandel(am), a, atol=1e-14)
    # sigma : eps is a plain dot product in Mandel notation
    assert torch.allclose((am * bm).sum(-1), (a * b).sum((-1, -2)), rtol=1e-13)


def test_rotation_of_stiffness_matches_tensor_rotation():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    R = mandel.quaternion_to_matrix(q)
    eps = torch.randn(4, 3, 3, generator=g)
    eps = eps + eps.transpose(1, 2)
    Q = mandel.rotation_mandel(R)
    rotated = mandel.to_mandel(R @ eps @ R.transpose(1, 2))
    assert torch.allclose(rotated, (Q @ mandel.to_mandel(eps)[..., None])[..., 0], atol=1e-13)
    assert torch.allclose(Q @ Q.transpose(1, 2), torch.eye(6).expand(4, 6, 6), atol=1e-13)
    # isotropic stiffness is invariant under any rotation
    C = mandel.isotropic_stiffness(E, NU)
    assert torch.allclose(Q @ C @ Q.transpose(1, 2), C.expand(4, 6, 6), rtol=1e-12, atol=1e-3)
    # quaternion <-> matrix round trip
    assert torch.allclose(mandel.quaternion_to_matrix(mandel.matrix_to_quaternion(R)), R, atol=1e-12)


def test_non_unit_quaternion_rejected():
    with pytest.raises(ValueError, match="unit norm"):
        mandel.quaternion_to_matrix(torch.tensor([[1.0, 0.1, 0.0, 0.0]]))


def test_bunge_euler_90_about_z():
    R = mandel.euler_bunge_to_matrix(torch.tensor(math.pi / 2), torch.tensor(0.0), torch.tensor(0.0))
    # crystal x axis maps to sample y axis
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-15)


def test_elastic_uniaxial_stress_gives_young_modulus_and_poisson():
    mat = LinearElastic(E, NU)
    t = torch.linspace(0, 1, 3)
    strain, stress = uniaxial_stress(mat, torch.tensor([0.0, 1e-3, 2e-3]), t)
    assert torch.allclose(stress[0, -1, 0], torch.tensor(E * 2e-3), rtol=1e-12)
    assert torch.allclose(strain[0, -1, 1], torch.tensor(-NU * 2e-3), rtol=1e-10)


@pytest.mark.parametrize("bad", [dict(E=-1.0), dict(nu=0.5), dict(sigma_y=0.0), dict(H_iso=-1.0)])
def test_j2_rejects_nonphysical_parameters(bad):
    kw = dict(E=E, nu=NU, sigma_y=SY, H_iso=1e9, H_kin=0.0)
    kw.update(bad)
    with pytest.raises(ValueError, match=list(bad)[0]):
        J2Plasticity(**kw)


def _uniaxial_closed_form(eps, H):
    """Monotonic uniaxial stress with linear hardening (isotropic or kinematic): sigma(eps)."""
    Et = E * H / (E + H)
    ey = SY / E
    return torch.where(eps <= ey, E * eps, SY + Et * (eps - ey))


@pytest.mark.parametrize("H_iso,H_kin", [(2e9, 0.0), (0.0, 2e9), (1e9, 1e9)])
def test_j2_uniaxial_loading_matches_closed_form(H_iso, H_kin):
    mat = J2Plasticity(E, NU, SY, H_iso, H_kin)
    eps = torch.linspace(0, 5e-3, 21)
    strain, stress = uniaxial_stress(mat, eps, torch.linspace(0, 1, 21))
    ref = _uniaxial_closed_form(eps, H_iso + H_kin)
    assert torch.allclose(stress[0, :, 0], ref, rtol=1e-10, atol=1e-3)
    assert torch.max(torch.abs(stress[0, :, 1:])) < 1e-3  # lateral stresses vanish [Pa]
    # plastic incompressibility: lateral plastic strains are -1/2 the axial one
    e = strain[0, -1]
    eps_p_axial = e[0] - stress[0, -1, 0] / E
    eps_p_lat = e[1] + NU * stress[0, -1, 0] / E
    assert torch.isclose(eps_p_lat, -0.5 * eps_p_axial, rtol=1e-9)


def test_j2_unloading_and_reverse_yield():
    """Kinematic: reverse yield at sigma_max - 2 sigma_y; isotropic: at -sigma_max."""
    H = 2e9
    path = torch.cat([torch.linspace(0, 4e-3, 9), torch.linspace(4e-3, -4e-3, 33)[1:]])
    t = torch.linspace(0, 1, path.numel())
    smax = _uniaxial_closed_form(torch.tensor(4e-3), H)
    for H_iso, H_kin, reverse in [(H, 0.0, -smax), (0.0, H, smax - 2 * SY)]:
        mat = J2Plasticity(E, NU, SY, H_iso, H_kin)
        _, stress = uniaxial_stress(mat, path, t)
        s = stress[0, :, 0]
        # elastic unloading: slope E right after the peak
        assert torch.isclose((s[9] - s[8]) / (path[9] - path[8]), torch.tensor(E), rtol=1e-10)
        # the first compressive plastic point: stress level at reverse yield
        eps_rev = path[8] - (smax - reverse) / E
        k = int(torch.nonzero(path[8:] < eps_rev)[0]) + 8
        Et = E * H / (E + H)
        expect = reverse - Et * (eps_rev - path[k])
        assert torch.isclose(s[k], expect, rtol=1e-9), (H_iso, H_kin)


@pytest.mark.parametrize("H_iso,H_kin", [(0.0, 0.0), (2e9, 0.0), (1e9, 3e9)])
def test_j2_consistent_tangent_against_finite_differences(H_iso, H_kin):
    mat = J2Plasticity(E, NU, SY, H_iso, H_kin)
    g = torch.Generator().manual_seed(3)
    n = 16
    state = mat.initial_state(n)
    # a plastic pre-strain, then a random increment (plastic for most points)
    pre = torch.randn(n, 6, generator=g) * 2e-3
    _, _, state = mat.update(pre, 1.0, state)
    strain = pre + torch.randn(n, 6, generator=g) * 2e-3
    _, C, _ = mat.update(strain, 1.0, state)
    assert bool(mat.info["plastic"].sum() >= n // 2)
    C_fd = fd_tangent(mat, strain, 1.0, state, h=1e-8)
    err = torch.linalg.norm(C - C_fd, dim=(1, 2)) / torch.linalg.norm(C_fd, dim=(1, 2))
    assert float(err.max()) < 1e-6
    assert torch.allclose(C, C.transpose(1, 2), rtol=1e-12, atol=1e-2)  # associative flow: symmetric


def test_j2_state_is_not_mutated_and_rollback_is_exact():
    mat = J2Plasticity(E, NU, SY, 1e9, 1e9)
    state = mat.initial_state(3)
    strain = torch.full((3, 6), 3e-3)
    before = {k: v.clone() for k, v in state.items()}
    s1, _, _ = mat.update(strain, 1.0, state)
    s2, _, _ = mat.update(strain, 1.0, state)
    for k in state:
        assert torch.equal(state[k], before[k])
    assert torch.equal(s1, s2)
