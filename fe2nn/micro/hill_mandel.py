"""Hill--Mandel macro-homogeneity check for RVE increments.

For a batch of B RVEs with M material points each (voxels or grains) and
volume fractions w (default uniform), the relative residual is::

    r = |<sigma : d_eps> - <sigma> : <d_eps>| / (||sigma|| ||d_eps||),   <.> = sum_m w_m (.),
    ||f|| = sqrt(<f : f>)  (RMS over the cell)

It vanishes when the microscopic power equals the macroscopic one.  The numerator is the
covariance <sigma~ : d_eps~> of the fluctuations (f~ = f - <f>), so 0 <= r <= 1 (Cauchy-Schwarz),
and it stays a relative measure where the macro increment vanishes while the fields still change
(a hold: the grains relax at a fixed macro strain).  Normalised by |<sigma>| |<d_eps>| instead, a
hold's round-off macro increment (~1e-19) made an equilibrated FFT cell read 3e-3.  Which
boundary conditions satisfy it, and why:

* Periodic fluctuations (FFT/spectral RVE): d_eps = <d_eps> + eps~ with eps~ the
  symmetric gradient of a periodic displacement fluctuation, and sigma
  divergence-free and periodic (anti-periodic tractions).  Hill's lemma gives
  <sigma : eps~> = 0 (integrate by parts; the boundary terms cancel pairwise on
  opposite faces), hence <sigma : d_eps> = <sigma> : <d_eps>.  On a discrete grid
  it holds to the solver tolerance when the discrete equilibrium and
  compatibility operators are adjoint (Galerkin/FFT projection).
* Iso-strain (Taylor/Voigt): d_eps is uniform, so <sigma : d_eps> = <sigma> : d_eps
  exactly (round-off only), whatever the stress field.
* Uniform traction (Sachs/Reuss): sigma uniform, same argument with roles swapped.

A non-uniform strain increment paired with a stress field that is not in
equilibrium with it (not divergence-free, or not periodic) generally violates
the condition, which is what this residual detects.
"""
from __future__ import annotations

import torch


def hill_mandel_residual(stress_field: torch.Tensor, dstrain_field: torch.Tensor,
                         weights: torch.Tensor | None = None, eps: float = 1e-300) -> torch.Tensor:
    """Relative Hill--Mandel residual (module doc), (B,), in [0, 1].

    stress_field: (B, M, 6) Mandel stresses [Pa]; dstrain_field: (B, M, 6) Mandel
    strain increments [-]; weights: (M,) or (B, M) volume fractions (normalized
    here), default uniform.  All-zero fields give 0, never NaN.
    """
    s = torch.as_tensor(stress_field)
    e = torch.as_tensor(dstrain_field, dtype=s.dtype, device=s.device)
    if s.ndim != 3 or s.shape[-1] != 6 or e.shape != s.shape:
        raise ValueError(f"fields must both have shape (B, M, 6), got {tuple(s.shape)} and {tuple(e.shape)}")
    B, M, _ = s.shape
    if weights is None:
        w = torch.full((B, M), 1.0 / M, dtype=s.dtype, device=s.device)
    else:
        w = torch.as_tensor(weights, dtype=s.dtype, device=s.device)
        w = w.expand(B, M) if w.shape == (M,) else w
        if w.shape != (B, M):
            raise ValueError(f"weights must have shape ({M},) or ({B}, {M}), got {tuple(w.shape)}")
        if bool((w < 0).any()) or bool((w.sum(-1) <= 0).any()):
            raise ValueError("weights must be non-negative with a positive sum")
        w = w / w.sum(-1, keepdim=True)
    s_mean = torch.einsum("bm,bmi->bi", w, s)
    e_mean = torch.einsum("bm,bmi->bi", w, e)
    micro = torch.einsum("bm,bmi,bmi->b", w, s, e)
    macro = (s_mean * e_mean).sum(-1)
    rms = torch.sqrt(torch.einsum("bm,bmi->b", w, s * s)) * torch.sqrt(torch.einsum("bm,bmi->b", w, e * e))
    return (micro - macro).abs() / torch.clamp(rms, min=eps)
