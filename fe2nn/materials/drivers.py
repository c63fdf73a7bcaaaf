"""Material-point drivers: run any Material along mixed strain/stress-controlled paths.

Used for test curves (uniaxial stress, with stress-free lateral directions) and
for checking tangents.  Batched over points; the only loop is over increments
and the Newton iterations of the mixed control.
"""
from __future__ import annotations

from typing import Sequence

import torch

from fe2nn.materials.base import Material, MaterialConvergenceError, State


def mixed_step(material: Material, strain_guess: torch.Tensor, stress_target: torch.Tensor,
               stress_mask: Sequence[bool], dt, state: State, rtol: float = 1e-12,
               atol: float = 1e-6, max_iter: int = 25):
    """One increment with the strain prescribed where ``stress_mask`` is False and
    the stress prescribed where it is True.

    strain_guess: (n,6) [-], its prescribed components are kept; stress_target:
    (n,6) [Pa] (used where masked).  Newton on the free strain components with
    the material tangent.  Returns (strain, stress, tangent, new_state).
    ``atol`` is an absolute stress tolerance [Pa].
    """
    mask = torch.as_tensor(list(stress_mask), dtype=torch.bool, device=strain_guess.device)
    strain = strain_guess.clone()
    free = torch.nonzero(mask).flatten()
    for _ in range(max_iter):
        stress, tangent, new_state = material.update(strain, dt, state)
        if free.numel() == 0:
            return strain, stress, tangent, new_state
        r = stress[:, free] - stress_target[:, free]
        scale = torch.linalg.norm(stress, dim=-1).clamp(min=atol)
        if bool(torch.all(torch.linalg.norm(r, dim=-1) <= torch.maximum(rtol * scale, torch.full_like(scale, atol)))):
            return strain, stress, tangent, new_state
        K = tangent[:, free][:, :, free]
        strain[:, free] -= torch.linalg.solve(K, r)
    raise MaterialConvergenceError("mixed stress/strain control did not converge")


def uniaxial_stress(material: Material, eps11: torch.Tensor, times: torch.Tensor, direction: int = 0,
                    state: State | None = None):
    """Uniaxial stress path: strain component ``direction`` follows ``eps11``, all
    other stress components vanish.

    eps11: (T+1,) or (n, T+1) axial strain history starting at the state's
    strain; times: (T+1,) [s].  Returns strain (n,T+1,6), stress (n,T+1,6).
    """
    eps11 = torch.as_tensor(eps11, dtype=material.dtype, device=material.device)
    if eps11.ndim == 1:
        eps11 = eps11[None]
    n, T1 = eps11.shape
    state = material.initial_state(n) if state is None else state
    mask = [True] * 6
    mask[direction] = False
    strain = torch.zeros(n, 6, dtype=material.dtype, device=material.device)
    strains = [strain.clone()]
    stresses = [torch.zeros_like(strain)]
    target = torch.zeros_like(strain)
    for k in range(1, T1):
        dt = float(times[k] - times[k - 1])
        guess = strain.clone()
        guess[:, direction] = eps11[:, k]
        strain, stress, _, state = mixed_step(material, guess, target, mask, dt, state)
        strains.append(strain.clone())
        stresses.append(stress)
    return torch.stack(strains, 1), torch.stack(stresses, 1)


def fd_tangent(material: Material, strain: torch.Tensor, dt, state: State, h: float = 1e-7) -> torch.Tensor:
    """Central finite-difference tangent d(stress)/d(strain) (n,6,6), same state."""
    cols = []
    for j in range(6):
        e = torch.zeros_like(strain)
        e[:, j] = h
        sp, _, _ = material.update(strain + e, dt, state)
        sm, _, _ = material.update(strain - e, dt, state)
        cols.append((sp - sm) / (2 * h))
    return torch.stack(cols, dim=-1)
