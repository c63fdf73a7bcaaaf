"""Taylor (iso-strain) polycrystal RVE as a batched Material.

Every grain g of a macro point sees the macro strain; the macro stress and the
consistent tangent are the volume averages over grains::

    sigma = sum_g w_g sigma_g(eps),   d sigma / d eps = sum_g w_g C_g^alg

(the average of the grain tangents is exact because d eps_g / d eps = I).
n macro points x G grains are evaluated as one SingleCrystal batch of n*G
points; point i*G + g uses grain g's orientation (the i % G rule).

State (leading dimension n): "strain" (n,6) macro strain, "eps_p" (n,G,6),
"xi" (n,G,12), "gamma" (n,G,12), "p_grain" (n,G) and "p" (n,) = volume
average of the grain equivalent plastic strains.  ``info``: "hill_mandel" (n,)
(relative residual, round-off for iso-strain), "iterations" (n,) (largest
local Newton count over the grains), "substeps" (n,).
"""
from __future__ import annotations

import torch

from fe2nn.materials.base import Material, MaterialConvergenceError, Response, State
from fe2nn.micro.crystal import CrystalParams, SingleCrystal
from fe2nn.micro.hill_mandel import hill_mandel_residual


class TaylorRVE(Material):
    """Iso-strain aggregate of G single-crystal grains with volume fractions ``weights``."""

    def __init__(self, params: CrystalParams, orientations, weights=None, device: str | torch.device = "cpu",
                 **crystal_options):
        super().__init__()
        self.device = torch.device(device)
        self.crystal = SingleCrystal(params, orientations, device=self.device, **crystal_options)
        self.params = params
        G = self.crystal.m
        if weights is None:
            w = torch.full((G,), 1.0 / G, dtype=self.dtype, device=self.device)
        else:
            w = self.as_tensor(weights).reshape(-1)
            if w.shape != (G,):
                raise ValueError(f"weights must have one value per grain ({G}), got {tuple(w.shape)}")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
                raise ValueError("grain weights must be finite, non-negative and not all zero")
            w = w / w.sum()
        self.weights = w
        self.n_grains = G

    @classmethod
    def from_microstructure(cls, microstructure, params: CrystalParams, device="cpu", **crystal_options):
        """Taylor RVE of a Microstructure: weights = grain volume fractions (empty grains dropped)."""
        w = microstructure.grain_fractions()
        keep = w > 0
        return cls(params, microstructure.orientations[keep], weights=w[keep], device=device, **crystal_options)

    keeps_last_update = True  # its grains' sticky substeps

    def forget_last_update(self) -> None:
        self.crystal.forget_last_update()

    def initial_state(self, n: int) -> State:
        G = self.n_grains
        cs = self.crystal.initial_state(n * G)
        return {
            "strain": torch.zeros(n, 6, dtype=self.dtype, device=self.device),
            "eps_p": cs["eps_p"].reshape(n, G, 6),
            "xi": cs["xi"].reshape(n, G, -1),
            "gamma": cs["gamma"].reshape(n, G, -1),
            "p_grain": cs["p"].reshape(n, G),
            "p": torch.zeros(n, dtype=self.dtype, device=self.device),
        }

    def update(self, strain: torch.Tensor, dt, state: State) -> Response:
        strain = self.as_tensor(strain)
        n, G = strain.shape[0], self.n_grains
        if strain.ndim != 2 or strain.shape[1] != 6:
            raise ValueError(f"strain must have shape (n, 6), got {tuple(strain.shape)}")
        dtv = self.as_dt(dt, n)
        cstate = {
            "strain": state["strain"].repeat_interleave(G, dim=0),
            "eps_p": state["eps_p"].reshape(n * G, 6),
            "xi": state["xi"].reshape(n * G, -1),
            "gamma": state["gamma"].reshape(n * G, -1),
            "p": state["p_grain"].reshape(n * G),
        }
        try:
            s, T, ns = self.crystal.update(strain.repeat_interleave(G, dim=0), dtv.repeat_interleave(G), cstate)
        except MaterialConvergenceError as err:
            failed = None if err.failed is None else err.failed.reshape(n, G).any(dim=1)
            raise MaterialConvergenceError(f"Taylor RVE: {err}", failed=failed) from None
        w = self.weights
        s_g = s.reshape(n, G, 6)
        stress = torch.einsum("g,ngi->ni", w, s_g)
        tangent = torch.einsum("g,ngij->nij", w, T.reshape(n, G, 6, 6))
        p_grain = ns["p"].reshape(n, G)
        new_state = {
            "strain": strain.clone(),
            "eps_p": ns["eps_p"].reshape(n, G, 6),
            "xi": ns["xi"].reshape(n, G, -1),
            "gamma": ns["gamma"].reshape(n, G, -1),
            "p_grain": p_grain,
            "p": p_grain @ w,
        }
        dstrain = (strain - state["strain"])[:, None, :].expand(n, G, 6)
        self.info = {
            "hill_mandel": hill_mandel_residual(s_g, dstrain, w),
            "iterations": self.crystal.info["iterations"].reshape(n, G).amax(dim=1),
            "substeps": self.crystal.info["substeps"].reshape(n, G).amax(dim=1),
        }
        return stress, tangent, new_state
