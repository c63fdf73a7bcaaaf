"""FCC power-law single crystal: closed-form Schmid estimates, rate sensitivity, hardening ODE,
consistent tangent vs finite differences, symmetry, parameter files and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fe2nn import mandel
from fe2nn.errors import UserError
from fe2nn.materials.base import MaterialConvergenceError
from fe2nn.micro.crystal import (
    CrystalParams,
    SingleCrystal,
    euler_to_quaternion,
    interaction_types,
    load_params,
    schmid_tensors,
    uniaxial_stress_path,
)

AL = load_params("aluminium")
IDENTITY = torch.tensor([[1.0, 0.0, 0.0, 0.0]])


def axis_to_z(direction) -> torch.Tensor:
    """Quaternion (1,4) of the rotation taking the crystal direction ``direction`` to sample z."""
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(d, z)
    s = np.linalg.norm(axis)
    if s < 1e-14:
        return IDENTITY.clone()
    angle = math.atan2(s, d @ z)
    axis /= s
    return torch.tensor([[math.cos(angle / 2), *(math.sin(angle / 2) * axis)]])


def random_quaternions(m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(m, 4, generator=g, dtype=torch.float64)
    return q / q.norm(dim=1, keepdim=True)


def schmid_estimate(p: CrystalParams, m: float, k: int, rate: float) -> float:
    """Steady uniaxial flow stress with k equally stressed systems of Schmid factor m."""
    return p.xi0 / m * (rate / (k * m * p.gdot0)) ** (1.0 / p.n)


def fd_tangent(mat, strain, dt, state, h=1e-7):
    cols = []
    for j in range(6):
        d = torch.zeros(6, dtype=torch.float64)
        d[j] = h
        sp, _, _ = mat.update(strain + d, dt, state)
        sm, _, _ = mat.update(strain - d, dt, state)
        cols.append((sp - sm) / (2 * h))
    return torch.stack(cols, dim=-1)


# -- parameters ------------------------------------------------------------------------
def test_bundled_parameters():
    assert (AL.C11, AL.C12, AL.C44) == (106.75e9, 60.41e9, 28.34e9)
    assert (AL.gdot0, AL.n, AL.a, AL.xi0, AL.xi_inf, AL.h0) == (1e-3, 20.0, 2.25, 31e6, 63e6, 75e6)
    assert AL.interaction == [1.0, 1.0, 1.4, 1.4, 1.4, 1.4, 1.4]
    cu = load_params("copper")
    assert cu.name == "copper" and cu.C44 == 75.7e9 and len(cu.interaction) == 7


def test_user_material_file(tmp_path):
    text = (
        'C11 = 100e9\nC12 = 50e9\nC44 = 30e9\ngdot0 = 1e-3\nn = 10\na = 2\nxi0 = 10e6\n'
        'xi_inf = 20e6\nh0 = 50e6\ninteraction = [1, 1, 1, 1, 1, 1, 1]\n'
    )
    f = tmp_path / "mymetal.toml"
    f.write_text(text)
    p = load_params(f)
    assert p.name == "mymetal" and p.n == 10.0
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("n = 10", "n = -1"))
    with pytest.raises(UserError, match=r"bad\.toml.*'n'.*> 0"):
        load_params(bad)
    bad.write_text(text.replace("C12 = 50e9", "C12 = 150e9"))
    with pytest.raises(UserError, match=r"bad\.toml.*positive definite"):
        load_params(bad)
    bad.write_text(text.replace("[1, 1, 1, 1, 1, 1, 1]", "[1, 1]"))
    with pytest.raises(UserError, match=r"bad\.toml.*interaction.*7 values"):
        load_params(bad)
    bad.write_text(text + "xi_0 = 3\n")
    with pytest.raises(UserError, match=r"unknown key 'xi_0'.*did you mean 'xi0'"):
        load_params(bad)
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "nothing.toml")
    with pytest.raises(UserError, match="bundled materials: aluminium, copper"):
        load_params("unobtainium")


@pytest.mark.parametrize("change", [dict(n=0.0), dict(n=-2.0), dict(C11=-1.0), dict(C44=0.0),
                                    dict(gdot0=0.0), dict(xi0=-1.0), dict(h0=-1.0), dict(xi_inf=1e6),
                                    dict(C12=200e9), dict(a=0.0), dict(interaction=[1.0] * 6)])
def test_bad_parameters(change):
    with pytest.raises(ValueError):
        AL.with_(**change)


def test_bad_orientations_and_shapes():
    with pytest.raises(ValueError, match="unit norm"):
        SingleCrystal(AL, torch.tensor([[1.0, 0.1, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        SingleCrystal(AL, torch.ones(2, 3))
    mat = SingleCrystal(AL, random_quaternions(3))
    with pytest.raises(ValueError, match="multiple of the 3 orientations"):
        mat.update(torch.zeros(4, 6), 1.0, mat.initial_state(4))
    with pytest.raises(ValueError, match="dt"):
        mat.update(torch.zeros(3, 6), 0.0, mat.initial_state(3))


# -- geometry ----------------------------------------------------------------------------
def test_slip_system_geometry_and_interaction_classes():
    P = schmid_tensors()
    # traceless, unit Frobenius norm 1/sqrt(2) (sym(d x n) with d.n = 0)
    assert torch.allclose(mandel.trace(P), torch.zeros(12), atol=1e-15)
    assert torch.allclose((P * P).sum(-1), torch.full((12,), 0.5))
    T = interaction_types()
    # each system meets: itself, 2 coplanar, 1 collinear, 2 Hirth, 2+2 glissile, 2 Lomer
    for row in T:
        assert np.bincount(row, minlength=7).tolist() == [1, 2, 1, 2, 2, 2, 2]
    assert (T == T.T)[np.isin(T, [0, 1, 2, 3, 6])].all()
    assert ((T == 4) == (T.T == 5)).all()  # glissile I/II swap under transposition


def test_cube_symmetry_leaves_stiffness_unchanged():
    C0 = mandel.cubic_stiffness(AL.C11, AL.C12, AL.C44)
    s = math.sqrt(0.5)
    cube_ops = torch.tensor([[s, s, 0, 0], [s, 0, s, 0], [s, 0, 0, s], [0, 1.0, 0, 0], [0.5, 0.5, 0.5, 0.5]])
    mat = SingleCrystal(AL, cube_ops)
    assert torch.allclose(mat.C, C0.expand(5, 6, 6), rtol=0, atol=1e-6 * AL.C11)
    # a general rotation does change it (cubic, not isotropic: C11 - C12 != 2 C44)
    gen = SingleCrystal(AL, random_quaternions(1))
    assert (gen.C[0] - C0).abs().max() > 1e-3 * AL.C11


def test_euler_helper_matches_quaternions():
    euler = torch.tensor([[0.3, 1.1, -0.4], [2.0, 0.2, 1.0]])
    q = euler_to_quaternion(euler)
    R = mandel.euler_bunge_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])
    assert torch.allclose(mandel.quaternion_to_matrix(q), R, atol=1e-12)
    a = SingleCrystal.from_euler(AL, euler)
    assert torch.allclose(a.C, SingleCrystal(AL, q).C)


# -- closed-form uniaxial checks ------------------------------------------------------------
def test_elastic_uniaxial_modulus_001():
    mat = SingleCrystal(AL, IDENTITY)
    eps, sig, _ = uniaxial_stress_path(mat, 1e-3, 2e-4, 2, axis=2)
    E001 = (AL.C11 - AL.C12) * (AL.C11 + 2 * AL.C12) / (AL.C11 + AL.C12)
    # 2e-4 strain at 100 MPa-scale flow stresses: rate-dependent slip ~ (tau/xi)^20 negligible
    assert sig[1, 0, 2] / eps[1] == pytest.approx(E001, rel=1e-6)
    assert sig[1, 0, [0, 1, 3, 4, 5]].abs().max() < 10.0  # lateral stresses vanish [Pa]


@pytest.fixture(scope="module")
def flow_curves():
    """[001] and [111] uniaxial tension, with and without hardening, two rates."""
    q = torch.cat([axis_to_z([0, 0, 1]), axis_to_z([1, 1, 1])])
    out = {}
    for label, p in (("soft", AL.with_(h0=0.0)), ("hard", AL)):
        for rate in (1e-3, 1e-2):
            mat = SingleCrystal(p, q)
            out[label, rate] = uniaxial_stress_path(mat, rate, 0.008, 40, n_points=2, axis=2)
    return out


@pytest.mark.parametrize("point, m, k", [(0, 1 / math.sqrt(6), 8), (1, 2 / (3 * math.sqrt(6)), 6)])
def test_schmid_flow_stress(flow_curves, point, m, k):
    eps, sig, state = flow_curves["soft", 1e-3]
    est = schmid_estimate(AL, m, k, 1e-3)  # 71.6 MPa for [001], 111 MPa for [111]
    assert sig[-1, point, 2] == pytest.approx(est, rel=0.02)
    # plateau: flow stress no longer changes without hardening
    assert abs(sig[-1, point, 2] - sig[-5, point, 2]) < 1e-4 * est
    # with hardening: stress at small plastic strain (first step with p >= 1e-4) still on the estimate
    eps_h, sig_h, _ = flow_curves["hard", 1e-3]
    mat = SingleCrystal(AL, torch.cat([axis_to_z([0, 0, 1]), axis_to_z([1, 1, 1])]))
    _, _, st = uniaxial_stress_path(mat, 1e-3, float(eps_h[12]), 12, n_points=2, axis=2)
    assert st["p"][point] > 1e-4
    assert sig_h[12, point, 2] == pytest.approx(est, rel=0.02)
    assert sig_h[-1, point, 2] > sig_h[12, point, 2]  # hardening


def test_rate_sensitivity(flow_curves):
    _, s1, _ = flow_curves["soft", 1e-3]
    _, s10, _ = flow_curves["soft", 1e-2]
    ratio = s10[-1, :, 2] / s1[-1, :, 2]
    assert torch.allclose(ratio, torch.full((2,), 10 ** (1 / AL.n)), rtol=5e-3)


def test_hardening_follows_slip_ode(flow_curves):
    """[001]: the 8 active systems slip equally, so dxi/dgamma = h0 phi(xi) sum_{b active} h_ab."""
    _, _, state = flow_curves["hard", 1e-3]
    gam, xi = state["gamma"][0], state["xi"][0]
    active = gam > 0.5 * gam.max()
    assert int(active.sum()) == 8
    assert torch.allclose(gam[active], gam[active].mean().expand(8), rtol=1e-6)
    H = AL.interaction_matrix()
    hsum = H[active][:, active].sum(1)
    assert torch.allclose(hsum, hsum[0].expand(8))
    # integrate the scalar ODE finely (RK4) up to the accumulated slip per system
    g_end, steps = float(gam[active].mean()), 2000
    dg = g_end / steps
    x = AL.xi0

    def f(x):
        return AL.h0 * abs(1 - x / AL.xi_inf) ** AL.a * math.copysign(1, 1 - x / AL.xi_inf) * float(hsum[0])

    for _ in range(steps):
        k1 = f(x)
        k2 = f(x + 0.5 * dg * k1)
        k3 = f(x + 0.5 * dg * k2)
        k4 = f(x + dg * k3)
        x += dg / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    # backward Euler with 40 steps: first-order error (~4e-4 here), bounded by 0.2 % of the hardening
    assert float(xi[active].mean()) - AL.xi0 == pytest.approx(x - AL.xi0, rel=2e-3)
    assert (xi <= AL.xi_inf).all() and (xi > AL.xi0).all()  # latent hardening of inactive systems


# -- tangent, batching, state ----------------------------------------------------------------
def _loaded_state(mat, n, amp, seed=3):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n, 6, generator=g, dtype=torch.float64) * amp
    st = mat.initial_state(n)
    for k in (1, 2, 3):
        _, _, st = mat.update(D * k / 3, 1.0, st)
    return D, st


@pytest.mark.parametrize("amp, plastic", [(1e-6, False), (2e-3, True)])
def test_consistent_tangent_matches_finite_differences(amp, plastic):
    mat = SingleCrystal(AL, random_quaternions(4))
    D, st = _loaded_state(mat, 8, amp)
    strain = D * 1.1
    _, T, new = mat.update(strain, 1.0, st)
    assert bool((new["p"] > 1e-5).all()) == plastic
    Tfd = fd_tangent(mat, strain, 1.0, st, h=1e-8 if plastic else 1e-7)
    err = (T - Tfd).norm(dim=(1, 2)) / Tfd.norm(dim=(1, 2))
    assert err.max() < 1e-5
    if not plastic:
        assert torch.allclose(T, mat.C.repeat(2, 1, 1), rtol=1e-6)


def test_tangent_with_substepping_matches_finite_differences():
    # few Newton iterations allowed: a large increment must be split into substeps
    mat = SingleCrystal(load_params("copper"), random_quaternions(2, seed=5), max_iter=10)
    strain = torch.tensor([[3e-3, -1e-3, -2e-3, 6e-4, 0, 3e-4]]).repeat(2, 1)
    st = mat.initial_state(2)
    _, T, _ = mat.update(strain, 1.0, st)
    assert int(mat.info["substeps"].max()) > 1
    Tfd = fd_tangent(mat, strain, 1.0, st, h=1e-9)
    err = (T - Tfd).norm(dim=(1, 2)) / Tfd.norm(dim=(1, 2))
    assert err.max() < 1e-5


def _copper_grains():
    """The 12 grains of the copper bar demo's Taylor RVE as one batch, and its first load step
    (5e-4 axial strain in 0.25 s): large against copper's 1.6 MPa initial slip resistance, so that
    some grains substep and the one-step backward-Euler problem has two roots in one grain."""
    from fe2nn.materials.registry import build_material

    rve = build_material({"model": "rve", "solver": "taylor", "material": "copper",
                          "microstructure": {"n_grains": 12, "grid": 16, "seed": 3}}, "demo.toml")
    mat = rve.crystal
    strain = 5e-4 * torch.tensor([[1.0, -0.35, -0.35, 0.0, 0.0, 0.0]], dtype=torch.float64).repeat(mat.m, 1)
    d = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mat, strain, 0.25, mat.initial_state(mat.m), d / d.norm()


def test_sticky_substeps_make_the_stress_smooth_within_a_step():
    """Calls from the same old state and step (a macro Newton iteration's) keep the substeps and
    roots of the last one: along a line of increments the stress of each grain changes smoothly
    (without: jumps of up to 90x the smooth change per 2e-7 of strain, where a grain changed its
    substeps or root), and central differences converge to the consistent tangent (without: 70 %
    off at h = 1e-7)."""
    mat, strain, dt, st, d = _copper_grains()
    _, T, _ = mat.update(strain, dt, st)
    assert int(mat.info["substeps"].max()) > 1
    for h in (1e-7, 1e-8):
        sp, _, _ = mat.update(strain + h * d, dt, st)
        sm, _, _ = mat.update(strain - h * d, dt, st)
        fd, an = (sp - sm) / (2 * h), T @ d
        assert float(((fd - an).norm(dim=1) / an.norm(dim=1)).max()) < 1e-6, h
    hs = np.linspace(-2e-6, 2e-6, 21)
    for _ in range(2):  # the first pass may refine a substep or two; the second is the one checked
        sd = np.array([(mat.update(strain + float(h) * d, dt, st)[0] @ d).numpy() for h in hs])
    inc = np.diff(sd, axis=0)  # (20, grains)
    assert np.abs(inc / np.median(inc, axis=0) - 1).max() < 0.05


def test_sticky_substeps_only_refine_and_first_calls_do_not_depend_on_them():
    """A call from another old state or with another step integrates as a first call (so steps of a
    path, e.g. a dataset's, do not depend on earlier calls, bit for bit); a call from the same state
    and step never uses fewer substeps than the last one."""
    mat, strain, dt, st, d = _copper_grains()
    fresh = SingleCrystal(mat.params, mat.orientations)
    s0, T0, new = mat.update(strain, dt, st)
    n0 = mat.info["substeps"].clone()
    small = 0.25 * strain
    s_small, _, _ = mat.update(small, dt, st)
    assert bool((mat.info["substeps"] >= n0).all())
    first, _, _ = fresh.update(small, dt, st)
    assert int(fresh.info["substeps"].sum()) < int(n0.sum()) and not torch.equal(first, s_small)
    for args in ((small, 0.5 * dt, st), (strain * 1.1, dt, new)):  # another step; another old state
        a = mat.update(*args)
        b = SingleCrystal(mat.params, mat.orientations).update(*args)
        for x, y in zip(a[:2], b[:2]):
            assert torch.equal(x, y)
    mat.update(strain, dt, st)
    mat.forget_last_update()  # the next call from the same state and step is a first one again
    assert torch.equal(mat.update(small, dt, st)[0], first)


def _step_converged(mat, strain, dt, st, m: int = 256):
    """The stress after the increment taken in m equal steps (each a first call): the reference
    that the one-step answer approaches as the step shrinks."""
    ref = SingleCrystal(mat.params, mat.orientations)
    for j in range(m):
        sig, _, st = ref.update(strain * (j + 1) / m, dt / m, st)
    return sig


def test_error_control_rejects_the_spurious_root_and_lowers_the_step_error():
    """substep_tol (step doubling) on copper's first bar step and 1.5 x it. Without it the predictor
    leads one grain's one-step Newton to a spurious root, 2.6 % from the step-converged stress (256
    equal steps; 1024 steps move it by < 1e-4). With substep_tol = 1e-2 that substep is rejected and
    no grain is 1 % off; with 1e-3 less again (each accepted substep within tol of its two halves,
    backward Euler's first-order error adding up over them). The tangent stays consistent (kept
    substeps are not checked again); substep_tol = 0 is the default."""
    mat, strain, dt, _, d = _copper_grains()
    strain = torch.cat([strain, 1.5 * strain])
    st = mat.initial_state(strain.shape[0])
    ref = _step_converged(mat, strain, dt, st)
    err = {}
    for tol in (0.0, 1e-2, 1e-3):
        m = SingleCrystal(mat.params, mat.orientations, substep_tol=tol)
        sig, T, _ = m.update(strain, dt, st)
        err[tol] = float(((sig - ref).norm(dim=1) / ref.norm(dim=1)).max())
        h = 1e-7
        sp, sm = m.update(strain + h * d, dt, st)[0], m.update(strain - h * d, dt, st)[0]
        fd, an = (sp - sm) / (2 * h), T @ d
        assert float(((fd - an).norm(dim=1) / an.norm(dim=1)).max()) < 1e-4, tol
    assert err[0.0] > 2e-2, err  # the spurious root is there without error control
    assert err[1e-2] < 1e-2 and err[1e-3] < 0.5 * err[1e-2], err
    assert SingleCrystal(mat.params, mat.orientations).substep_tol == 0.0
    with pytest.raises(ValueError, match="substep_tol"):
        SingleCrystal(mat.params, mat.orientations, substep_tol=-1e-3)


def test_batching_rules_and_state_immutability():
    q = random_quaternions(3, seed=7)
    mat = SingleCrystal(AL, q)
    D, st = _loaded_state(mat, 6, 1e-3)
    before = {k: v.clone() for k, v in st.items()}
    dt = torch.tensor([0.5, 1.0, 2.0, 0.5, 1.0, 2.0])
    s, T, new = mat.update(D * 1.2, dt, st)
    for k in st:
        assert torch.equal(st[k], before[k])
    assert set(new) == {"strain", "eps_p", "xi", "gamma", "p"}
    assert new["p"].shape == (6,) and new["xi"].shape == (6, 12)
    # point i uses orientation i % 3 and its own dt: compare with one-orientation materials
    for i in range(6):
        single = SingleCrystal(AL, q[i % 3: i % 3 + 1])
        si, Ti, _ = single.update(D[i:i + 1] * 1.2, float(dt[i]), {k: v[i:i + 1] for k, v in st.items()})
        assert torch.allclose(si, s[i:i + 1], rtol=1e-10, atol=1e-3)
        assert torch.allclose(Ti, T[i:i + 1], rtol=1e-8, atol=1e-2)
    assert torch.isfinite(s).all() and torch.isfinite(T).all()


def test_nonconverged_increment_raises_not_nan():
    mat = SingleCrystal(AL, IDENTITY, max_iter=1, max_substeps=1)
    st = mat.initial_state(2)
    strain = torch.tensor([[5e-2, 0, -5e-2, 0, 0, 0], [1e-7, 0, 0, 0, 0, 0]])
    with pytest.raises(MaterialConvergenceError) as err:
        mat.update(strain, 1e-6, st)
    assert err.value.failed.tolist() == [True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    q = random_quaternions(4)
    cpu = SingleCrystal(AL, q)
    gpu = SingleCrystal(AL, q, device="cuda")
    D, st = _loaded_state(cpu, 8, 2e-3)
    s, T, _ = cpu.update(D * 1.1, 1.0, st)
    sg, Tg, _ = gpu.update((D * 1.1).cuda(), 1.0, {k: v.cuda() for k, v in st.items()})
    assert torch.allclose(sg.cpu(), s, rtol=1e-9, atol=1e-3)
    assert torch.allclose(Tg.cpu(), T, rtol=1e-7, atol=1.0)
