"""Hill-Mandel residual: exact for iso-strain and for periodic-fluctuation fields in equilibrium,
a clear violation for non-admissible pairs."""
from __future__ import annotations

import math

import pytest
import torch

from fe2nn.micro.hill_mandel import hill_mandel_residual


def test_uniform_strain_increment_satisfies_hill_mandel():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 50, 6, generator=g, dtype=torch.float64) * 1e8
    de = torch.randn(4, 1, 6, generator=g, dtype=torch.float64).expand(4, 50, 6) * 1e-3
    w = torch.rand(50, generator=g, dtype=torch.float64)
    assert hill_mandel_residual(s, de, w).max() < 1e-12
    assert hill_mandel_residual(s, de).max() < 1e-12


def test_periodic_fluctuation_with_equilibrated_stress_satisfies_hill_mandel():
    """1-D laminate along x on a periodic grid: sigma_xx, sigma_xy, sigma_xz must be uniform
    (div sigma = 0), the other stress components are free; the fluctuation strain is the
    symmetric gradient of a periodic displacement u(x): eps~_xx = u_x', eps~_xy = u_y'/2 ..."""
    M = 64
    x = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    ux, uy, uz = torch.sin(2 * math.pi * x), 0.3 * torch.cos(4 * math.pi * x), 0.1 * torch.sin(6 * math.pi * x)
    d = lambda u: (torch.roll(u, -1) - u) * M  # periodic forward difference (fluctuation has zero mean)
    fluct = torch.zeros(M, 6, dtype=torch.float64)
    fluct[:, 0] = d(ux)
    fluct[:, 5] = math.sqrt(2) * 0.5 * d(uy)
    fluct[:, 4] = math.sqrt(2) * 0.5 * d(uz)
    mean = torch.tensor([1e-3, -2e-4, 3e-4, 1e-4, 2e-4, -1e-4], dtype=torch.float64)
    de = (mean + 1e-3 * fluct)[None]
    g = torch.Generator().manual_seed(1)
    s = torch.randn(1, M, 6, generator=g, dtype=torch.float64) * 1e8
    s[..., [0, 4, 5]] = torch.tensor([2e8, 3e7, -4e7], dtype=torch.float64)  # traction components uniform
    assert hill_mandel_residual(s, de).item() < 1e-12
    # a stress field whose traction component sigma_xx varies along x is not in equilibrium
    s_bad = s.clone()
    s_bad[0, :, 0] = 2e8 * (1 + 0.5 * torch.sin(2 * math.pi * x))
    assert hill_mandel_residual(s_bad, de).item() > 1e-2
    # a hold: the macro increment vanishes up to round-off while the fluctuation still changes (the
    # grains relax); the residual stays relative to the fields, not to the round-off mean
    hold = (1e-16 * mean + 1e-8 * fluct)[None]
    assert hill_mandel_residual(s, hold).item() < 1e-12
    assert hill_mandel_residual(s_bad, hold).item() > 1e-2


def test_nonadmissible_pair_reports_violation():
    # two phases, strain concentrated where the stress is high: <s:e> != <s>:<e>
    s = torch.zeros(1, 2, 6, dtype=torch.float64)
    s[0, 0, 0], s[0, 1, 0] = 3e8, 1e8
    de = torch.zeros(1, 2, 6, dtype=torch.float64)
    de[0, 0, 0], de[0, 1, 0] = 3e-3, 1e-3
    r = hill_mandel_residual(s, de)
    # <s:e> = 5e5, <s>:<e> = 4e5, ||s|| ||e|| = sqrt(5e16) sqrt(5e-6) = 5e5  -> 0.2
    assert r.item() == pytest.approx(0.2, rel=1e-12)
    # perfectly correlated fluctuations are the bound: r = <s~:e~> / (||s|| ||e||) <= 1
    assert hill_mandel_residual(s - s.mean(1, keepdim=True), de - de.mean(1, keepdim=True)).item() \
        == pytest.approx(1.0, rel=1e-12)


def test_zero_fields_and_bad_shapes():
    z = torch.zeros(2, 3, 6, dtype=torch.float64)
    assert torch.equal(hill_mandel_residual(z, z), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        hill_mandel_residual(torch.zeros(3, 6), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="weights"):
        hill_mandel_residual(z, z, torch.ones(4))
