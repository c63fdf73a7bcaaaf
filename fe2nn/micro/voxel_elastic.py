"""Linear elasticity with a different constant stiffness in every voxel of an RVE.

The voxel material of an FFT RVE is called on ``n = B * Nvox`` points at once
(B RVEs, Nvox voxels each); point ``i`` is voxel ``i % Nvox``.
"""
from __future__ import annotations

import torch

from fe2nn import mandel
from fe2nn.materials.base import Material, Response, State


class VoxelElastic(Material):
    """sigma = C_v : eps with a per-voxel Mandel stiffness ``C_v`` [Pa].

    ``stiffness``: (Nvox, 6, 6) symmetric positive definite Mandel matrices [Pa].
    Handles ``n = B * Nvox`` points; point i uses ``stiffness[i % Nvox]``.
    """

    def __init__(self, stiffness, device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        C = self.as_tensor(stiffness)
        if C.ndim != 3 or C.shape[1:] != (6, 6) or C.shape[0] < 1:
            raise ValueError(f"stiffness must have shape (Nvox, 6, 6), got {tuple(C.shape)}")
        if not torch.allclose(C, C.transpose(1, 2), rtol=1e-12, atol=0.0):
            raise ValueError("every voxel stiffness must be a symmetric 6x6 Mandel matrix")
        if torch.linalg.eigvalsh(C).min() <= 0:
            raise ValueError("every voxel stiffness must be positive definite")
        self.C = C.contiguous()
        self.n_voxels = C.shape[0]

    @classmethod
    def from_phases(cls, phase_ids, phase_stiffness, device="cpu") -> "VoxelElastic":
        """Voxel stiffness from integer phase ids (any shape, C order) and (P, 6, 6) stiffnesses."""
        ids = torch.as_tensor(phase_ids, device=device).reshape(-1).long()
        C = torch.as_tensor(phase_stiffness, dtype=torch.float64, device=device)
        return cls(C[ids], device=device)

    @classmethod
    def cubic_polycrystal(cls, C11: float, C12: float, C44: float, orientations,
                          device="cpu") -> "VoxelElastic":
        """Rotated cubic crystals; ``orientations`` (Nvox, 4) unit quaternions (crystal -> sample)."""
        q = torch.as_tensor(orientations, dtype=torch.float64, device=device)
        Q = mandel.rotation_mandel(mandel.quaternion_to_matrix(q))
        Cc = mandel.cubic_stiffness(C11, C12, C44, device=device)
        C = Q @ Cc @ Q.transpose(-1, -2)
        return cls(0.5 * (C + C.transpose(-1, -2)), device=device)

    def initial_state(self, n: int) -> State:
        return {}

    def update(self, strain: torch.Tensor, dt, state: State) -> Response:
        strain = self.as_tensor(strain)
        n = strain.shape[0]
        if n % self.n_voxels:
            raise ValueError(f"VoxelElastic with {self.n_voxels} voxels called on {n} points "
                             "(must be a multiple)")
        B = n // self.n_voxels
        C = self.C.unsqueeze(0).expand(B, -1, -1, -1).reshape(n, 6, 6)
        stress = (C @ strain.unsqueeze(-1)).squeeze(-1)
        return stress, C.clone(), {}
