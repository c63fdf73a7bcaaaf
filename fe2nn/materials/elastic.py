"""Isotropic (or any constant-stiffness) linear elasticity."""
from __future__ import annotations

import torch

from fe2nn import mandel
from fe2nn.materials.base import Material, Response, State


class LinearElastic(Material):
    """sigma = C : eps with constant stiffness C (Mandel, Pa).

    Parameters: Young's modulus ``E`` [Pa] > 0 and Poisson's ratio ``nu`` in
    (-1, 0.5); or a full 6x6 Mandel ``stiffness`` [Pa] (symmetric positive
    definite).
    """

    def __init__(self, E: float | None = None, nu: float | None = None, stiffness=None,
                 device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        if stiffness is None:
            if E is None or nu is None:
                raise ValueError("LinearElastic needs E and nu, or a stiffness matrix")
            if not E > 0:
                raise ValueError(f"Young's modulus E must be > 0 Pa, got {E}")
            if not -1.0 < nu < 0.5:
                raise ValueError(f"Poisson's ratio nu must lie in (-1, 0.5), got {nu}")
            C = mandel.isotropic_stiffness(E, nu, self.dtype, self.device)
        else:
            C = self.as_tensor(stiffness)
            if C.shape != (6, 6) or not torch.allclose(C, C.T, rtol=1e-12, atol=0.0):
                raise ValueError("stiffness must be a symmetric 6x6 Mandel matrix")
            if torch.linalg.eigvalsh(C).min() <= 0:
                raise ValueError("stiffness must be positive definite")
        self.E, self.nu = E, nu
        self.C = C

    def initial_state(self, n: int) -> State:
        return {}

    def update(self, strain: torch.Tensor, dt: float, state: State) -> Response:
        strain = self.as_tensor(strain)
        stress = strain @ self.C.T
        tangent = self.C.expand(strain.shape[0], 6, 6).clone()
        return stress, tangent, {}
