"""Mandel notation for symmetric second- and fourth-order tensors, plus rotations.

Convention (used everywhere in fe2nn, SI units):

    a = (a11, a22, a33, sqrt2*a23, sqrt2*a13, sqrt2*a12)

so that ``sigma : eps == sigma_m @ eps_m`` and fourth-order tensors with minor
symmetries become 6x6 matrices ``C_m`` with ``sigma_m = C_m @ eps_m``; major
symmetry of ``C`` is symmetry of ``C_m``.  Engineering shear strains are *not*
used anywhere.

All functions are batched over leading dimensions and work on torch tensors
(float64 recommended).
"""
from __future__ import annotations

import math

import torch

SQRT2 = math.sqrt(2.0)

#: (i, j) index pairs of the six Mandel components.
MANDEL_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_W = (1.0, 1.0, 1.0, SQRT2, SQRT2, SQRT2)


def _weights(ref: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_W, dtype=ref.dtype, device=ref.device)


def to_mandel(t: torch.Tensor) -> torch.Tensor:
    """Symmetric tensors (..., 3, 3) -> Mandel vectors (..., 6)."""
    i = [p[0] for p in MANDEL_PAIRS]
    j = [p[1] for p in MANDEL_PAIRS]
    return t[..., i, j] * _weights(t)


def from_mandel(v: torch.Tensor) -> torch.Tensor:
    """Mandel vectors (..., 6) -> symmetric tensors (..., 3, 3)."""
    a = v / _weights(v)
    t = v.new_zeros(v.shape[:-1] + (3, 3))
    for k, (i, j) in enumerate(MANDEL_PAIRS):
        t[..., i, j] = a[..., k]
        t[..., j, i] = a[..., k]
    return t


def identity2(dtype=torch.float64, device=None) -> torch.Tensor:
    """Second-order identity in Mandel form, shape (6,)."""
    return torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=dtype, device=device)


def identity4(dtype=torch.float64, device=None) -> torch.Tensor:
    """Symmetric fourth-order identity in Mandel form (the 6x6 identity)."""
    return torch.eye(6, dtype=dtype, device=device)


def volumetric_projector(dtype=torch.float64, device=None) -> torch.Tensor:
    """J = (1/3) I (x) I in Mandel form, shape (6, 6)."""
    i2 = identity2(dtype, device)
    return torch.outer(i2, i2) / 3.0


def deviatoric_projector(dtype=torch.float64, device=None) -> torch.Tensor:
    """K = I_sym - J in Mandel form, shape (6, 6)."""
    return identity4(dtype, device) - volumetric_projector(dtype, device)


def trace(v: torch.Tensor) -> torch.Tensor:
    """Trace of Mandel vectors (..., 6) -> (...)."""
    return v[..., 0] + v[..., 1] + v[..., 2]


def deviator(v: torch.Tensor) -> torch.Tensor:
    """Deviatoric part of Mandel vectors (..., 6)."""
    d = v.clone()
    d[..., :3] -= trace(v)[..., None] / 3.0
    return d


def von_mises(stress: torch.Tensor) -> torch.Tensor:
    """Von Mises equivalent stress sqrt(3/2 s:s) of Mandel stresses (..., 6) [Pa]."""
    s = deviator(stress)
    return torch.sqrt(1.5 * (s * s).sum(-1))


def equivalent_strain(strain: torch.Tensor) -> torch.Tensor:
    """Equivalent strain sqrt(2/3 e:e) of the deviator of Mandel strains (..., 6) [-]."""
    e = deviator(strain)
    return torch.sqrt(2.0 / 3.0 * (e * e).sum(-1))


def isotropic_stiffness(E: float, nu: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Isotropic elasticity tensor 3K J + 2G K in Mandel form, shape (6, 6) [Pa]."""
    K = E / (3.0 * (1.0 - 2.0 * nu))
    G = E / (2.0 * (1.0 + nu))
    return 3.0 * K * volumetric_projector(dtype, device) + 2.0 * G * deviatoric_projector(dtype, device)


def cubic_stiffness(C11: float, C12: float, C44: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Cubic elasticity tensor in the crystal frame, Mandel form (6, 6) [Pa].

    The shear entries are 2*C44 because Mandel shear components carry sqrt(2).
    """
    C = torch.zeros(6, 6, dtype=dtype, device=device)
    C[:3, :3] = C12
    C[0, 0] = C[1, 1] = C[2, 2] = C11
    C[3, 3] = C[4, 4] = C[5, 5] = 2.0 * C44
    return C


def rotation_mandel(R: torch.Tensor) -> torch.Tensor:
    """6x6 Mandel rotation Q such that to_mandel(R A R^T) = Q @ to_mandel(A).

    R: (..., 3, 3) proper orthogonal; returns (..., 6, 6).  Q is orthogonal, so a
    stiffness rotates as Q C Q^T.
    """
    rows = []
    for (i, j), wi in zip(MANDEL_PAIRS, _W):
        cols = []
        for (k, l), wk in zip(MANDEL_PAIRS, _W):
            if k == l:
                val = R[..., i, k] * R[..., j, l]
            else:
                val = R[..., i, k] * R[..., j, l] + R[..., i, l] * R[..., j, k]
            cols.append(val * wi / wk)
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


def quaternion_to_matrix(q: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotation matrices (..., 3, 3).

    Raises ValueError when a quaternion is not of unit norm within ``atol``.
    The matrix maps crystal-frame components to sample-frame components.
    """
    norm = torch.linalg.norm(q, dim=-1)
    if torch.any(~torch.isfinite(norm)) or torch.any(torch.abs(norm - 1.0) > atol):
        worst = float(torch.max(torch.abs(norm - 1.0)))
        raise ValueError(f"quaternions must have unit norm (largest |norm - 1| = {worst:.3g})")
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def euler_bunge_to_matrix(phi1: torch.Tensor, Phi: torch.Tensor, phi2: torch.Tensor) -> torch.Tensor:
    """Bunge Euler angles (rad), Z-X-Z, -> crystal-to-sample rotation matrices (..., 3, 3).

    Bunge's g maps sample to crystal; this returns g^T (crystal to sample), the
    same convention as :func:`quaternion_to_matrix`.
    """
    c1, s1 = torch.cos(phi1), torch.sin(phi1)
    c, s = torch.cos(Phi), torch.sin(Phi)
    c2, s2 = torch.cos(phi2), torch.sin(phi2)
    g = torch.stack(
        [
            c1 * c2 - s1 * s2 * c, s1 * c2 + c1 * s2 * c, s2 * s,
            -c1 * s2 - s1 * c2 * c, -s1 * s2 + c1 * c2 * c, c2 * s,
            s1 * s, -c1 * s, c,
        ],
        dim=-1,
    ).reshape(phi1.shape + (3, 3))
    return g.transpose(-1, -2)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), w >= 0."""
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cand = torch.stack(
        [
            1 + tr,
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
        ],
        dim=-1,
    )
    k = torch.argmax(cand, dim=-1)
    w = 0.5 * torch.sqrt(torch.clamp(1 + tr, min=0))
    x = 0.5 * torch.sqrt(torch.clamp(cand[..., 1], min=0))
    y = 0.5 * torch.sqrt(torch.clamp(cand[..., 2], min=0))
    z = 0.5 * torch.sqrt(torch.clamp(cand[..., 3], min=0))
    # fix signs relative to the largest component
    q = torch.stack([w, x, y, z], dim=-1)
    a21 = m[..., 2, 1] - m[..., 1, 2]
    a02 = m[..., 0, 2] - m[..., 2, 0]
    a10 = m[..., 1, 0] - m[..., 0, 1]
    s01 = m[..., 0, 1] + m[..., 1, 0]
    s02 = m[..., 0, 2] + m[..., 2, 0]
    s12 = m[..., 1, 2] + m[..., 2, 1]
    q0 = torch.stack([w, a21 / (4 * w.clamp(min=1e-300)), a02 / (4 * w.clamp(min=1e-300)), a10 / (4 * w.clamp(min=1e-300))], -1)
    q1 = torch.stack([a21 / (4 * x.clamp(min=1e-300)), x, s01 / (4 * x.clamp(min=1e-300)), s02 / (4 * x.clamp(min=1e-300))], -1)
    q2 = torch.stack([a02 / (4 * y.clamp(min=1e-300)), s01 / (4 * y.clamp(min=1e-300)), y, s12 / (4 * y.clamp(min=1e-300))], -1)
    q3 = torch.stack([a10 / (4 * z.clamp(min=1e-300)), s02 / (4 * z.clamp(min=1e-300)), s12 / (4 * z.clamp(min=1e-300)), z], -1)
    allq = torch.stack([q0, q1, q2, q3], dim=-2)
    q = torch.take_along_dim(allq, k[..., None, None].expand(k.shape + (1, 4)), dim=-2)[..., 0, :]
    q = torch.where(q[..., :1] < 0, -q, q)
    return q / torch.linalg.norm(q, dim=-1, keepdim=True)
