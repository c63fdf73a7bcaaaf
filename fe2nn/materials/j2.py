"""J2 (von Mises) plasticity with linear isotropic and linear kinematic hardening.

Small strain, rate independent.  Radial return mapping and the consistent
algorithmic tangent (Simo & Hughes, Computational Inelasticity, ch. 3):

    f = sqrt(3/2) |dev(sigma) - beta| - (sigma_y + H_iso p) <= 0
    d(eps_p) = dp * sqrt(3/2) n,    d(beta) = (2/3) H_kin d(eps_p)   (Prager)

so that in uniaxial tension the plastic modulus d(sigma)/d(eps_p) is H_iso + H_kin.
"""
from __future__ import annotations

import math

import torch

from fe2nn import mandel
from fe2nn.materials.base import Material, Response, State

_S32 = math.sqrt(1.5)


class J2Plasticity(Material):
    """Von Mises plasticity, batched over points.

    Parameters [Pa]: ``E`` > 0, ``nu`` in (-1, 0.5), initial yield stress
    ``sigma_y`` > 0, isotropic hardening modulus ``H_iso`` >= 0 and kinematic
    hardening modulus ``H_kin`` >= 0.

    State: ``eps_p`` (n,6) plastic strain, ``backstress`` (n,6), ``p`` (n,)
    accumulated equivalent plastic strain.
    """

    def __init__(self, E: float, nu: float, sigma_y: float, H_iso: float = 0.0, H_kin: float = 0.0,
                 device: str | torch.device = "cpu"):
        super().__init__()
        checks = [
            (E > 0, f"Young's modulus E must be > 0 Pa, got {E}"),
            (-1.0 < nu < 0.5, f"Poisson's ratio nu must lie in (-1, 0.5), got {nu}"),
            (sigma_y > 0, f"yield stress sigma_y must be > 0 Pa, got {sigma_y}"),
            (H_iso >= 0, f"isotropic hardening modulus H_iso must be >= 0 Pa, got {H_iso}"),
            (H_kin >= 0, f"kinematic hardening modulus H_kin must be >= 0 Pa, got {H_kin}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.device = torch.device(device)
        self.E, self.nu, self.sigma_y, self.H_iso, self.H_kin = E, nu, sigma_y, H_iso, H_kin
        self.G = E / (2.0 * (1.0 + nu))
        self.C = mandel.isotropic_stiffness(E, nu, self.dtype, self.device)
        self.K4 = mandel.deviatoric_projector(self.dtype, self.device)

    def initial_state(self, n: int) -> State:
        z6 = torch.zeros(n, 6, dtype=self.dtype, device=self.device)
        return {"eps_p": z6, "backstress": z6.clone(), "p": torch.zeros(n, dtype=self.dtype, device=self.device)}

    def update(self, strain: torch.Tensor, dt, state: State) -> Response:
        strain = self.as_tensor(strain)
        n = strain.shape[0]
        G, H = self.G, self.H_iso + self.H_kin
        eps_p, beta, p = state["eps_p"], state["backstress"], state["p"]

        sig_tr = (strain - eps_p) @ self.C.T
        xi_tr = mandel.deviator(sig_tr) - beta
        norm_tr = torch.linalg.norm(xi_tr, dim=-1)
        q_tr = _S32 * norm_tr
        f = q_tr - (self.sigma_y + self.H_iso * p)
        plastic = f > 0.0

        dp = torch.where(plastic, f / (3.0 * G + H), torch.zeros_like(f))
        safe_norm = torch.where(plastic, norm_tr, torch.ones_like(norm_tr))
        nvec = xi_tr / safe_norm[:, None]
        deps_p = (_S32 * dp)[:, None] * nvec

        stress = sig_tr - 2.0 * G * deps_p
        new_state = {
            "eps_p": eps_p + deps_p,
            "backstress": beta + (2.0 / 3.0) * self.H_kin * deps_p,
            "p": p + dp,
        }

        tangent = self.C.expand(n, 6, 6).clone()
        if bool(plastic.any()):
            nn = nvec[:, :, None] * nvec[:, None, :]
            a = 6.0 * G * G / (3.0 * G + H)
            b = torch.where(plastic, 6.0 * G * G * dp / torch.where(plastic, q_tr, torch.ones_like(q_tr)),
                            torch.zeros_like(dp))
            corr = a * nn + b[:, None, None] * (self.K4 - nn)
            tangent = tangent - torch.where(plastic[:, None, None], corr, torch.zeros_like(corr))
        self.info = {"plastic": plastic}
        return stress, tangent, new_state
