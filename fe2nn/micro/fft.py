"""Full-field periodic RVE solved with FFTs (Fourier–Galerkin, small strain), batched over RVEs.

Unknown: the total strain field ``eps = E + eps~`` of every RVE on a regular grid of cubic
voxels, with macro strain ``E`` prescribed and a periodic, compatible fluctuation ``eps~`` of
zero mean.  Equilibrium ``div sigma(eps) = 0`` is solved by Newton's method; each Newton
correction solves the linearised periodic problem ``div(K : d_eps) = -div sigma`` by a
preconditioned conjugate gradient (PCG) iteration on compatible strain fields, preconditioned
by the Green operator ``Gamma0`` of an isotropic reference medium ``C0`` (the mean voxel
tangent projected on isotropy).  ``Gamma0`` is applied in Fourier space,

    Gamma0(xi) : tau  =  sym(n (x) N0(n)^-1 (tau . n)),   n = xi/|xi|,
    N0(n)^-1 = (I - (lam0 + mu0)/(lam0 + 2 mu0) n (x) n) / mu0,

which is the Fourier–Galerkin scheme of Zeman, de Geus et al. (2017) with the reference medium
as preconditioner (a displacement-free PCG: every iterate is compatible with zero mean by
construction).  On even grids, modes made only of zero and Nyquist wave numbers (their own
complex conjugates) keep their wave vector, so axis-aligned laminates are exact; in every
other mode a Nyquist wave number is set to zero (the derivative of the real Nyquist mode
vanishes at the grid points), which keeps the operator real and symmetric.  Voxels are cubic: the cell is (N1, N2, N3) voxels of equal size.

Convergence (per RVE): the equilibrium residual ``||G sigma|| / ||sigma||`` (L2 norms over
the cell, ``G`` the orthogonal projection on compatible fields, so ``G sigma = 0`` is exactly
equilibrium) must drop below ``tol``.  The homogenised consistent tangent solves the same
linearised problem for the six unit macro strains (one batched PCG), not a perturbation of the
nonlinear problem.

Shapes: macro strain/stress (B, 6), tangent (B, 6, 6); fields internally (B, 6, N1, N2, N3),
in the state (B, Nvox, 6) with voxels in C order of (N1, N2, N3).
"""
from __future__ import annotations

import math
import numbers
import time
from typing import Dict, Optional, Tuple

import torch

from fe2nn.materials.base import Material, MaterialConvergenceError, Response, State
from fe2nn.micro.hill_mandel import hill_mandel_residual

_A = 1.0 / math.sqrt(2.0)
_DIMS = (-3, -2, -1)
_VOXEL = "voxel_"


def _grid_of(microstructure) -> Tuple[int, int, int]:
    if hasattr(microstructure, "grain_ids"):
        shape = tuple(microstructure.grain_ids.shape)
    else:
        shape = tuple(microstructure)
    if len(shape) != 3 or any((not isinstance(s, numbers.Integral)) or s < 1 for s in shape):
        raise ValueError(f"RVE grid must be three positive integers (N1, N2, N3), got {shape}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


class FFTRVE(Material):
    """Periodic full-field RVE as a batched fe2nn Material (strain control).

    Parameters
    ----------
    params
        The voxel material: a :class:`Material` evaluated on ``n = B * Nvox`` points (point i
        is voxel i % Nvox), or single-crystal parameters (a
        :class:`fe2nn.micro.crystal.CrystalParams`, or a bundled name such as ``"aluminium"``
        or a TOML path), in which case a
        :class:`fe2nn.micro.crystal.SingleCrystal` with the microstructure's voxel
        orientations is built.
    microstructure
        An object with ``grain_ids`` (N1, N2, N3) (and ``voxel_orientations()`` when
        parameters are given), or a grid tuple (N1, N2, N3) with a voxel material.
    tol
        Relative equilibrium residual ``||G sigma|| / ||sigma||`` at convergence (> 0).
    max_newton
        Newton corrections allowed per increment (>= 1).
    cg_tol
        Relative PCG residual reduction per Newton correction (in (0, 1)); loosened
        automatically near convergence to ``0.1 * tol / residual``.
    max_cg
        PCG iterations allowed per linear solve (>= 1).
    tangent_tol
        Relative PCG residual reduction for the six homogenised-tangent solves (in (0, 1)).
    max_backtrack
        Step halvings allowed per Newton correction (line search on the residual, >= 0).
    substep_tol
        Error control of the voxels' crystal integration (step doubling, relative; 0 = off): the
        ``substep_tol`` of the :class:`fe2nn.micro.crystal.SingleCrystal` built from crystal
        parameters.  With a voxel material given instead, set it on that material.
    device
        torch device ("cpu", "cuda").

    After each update ``info`` holds, per RVE (B,): "hill_mandel" (relative residual of the
    converged stress and strain-increment fields), "newton_iterations" (= "iterations"),
    "cg_iterations" (PCG iterations summed over the Newton corrections; in mixed control the
    largest count of the systems solved together) and "tangent_cg_iterations" (largest of the
    six tangent solves).  ``stress_field`` (B, Nvox, 6) is the last converged stress field.
    """

    def __init__(self, params, microstructure, tol: float = 1e-8,
                 max_newton: int = 25, cg_tol: float = 1e-3, max_cg: int = 2000,
                 tangent_tol: float = 1e-8, max_backtrack: int = 8, substep_tol: float = 0.0,
                 device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        for name, val in (("tol", tol), ("cg_tol", cg_tol), ("tangent_tol", tangent_tol)):
            if not (isinstance(val, (int, float)) and 0.0 < val < 1.0):
                raise ValueError(f"FFTRVE {name} must lie in (0, 1), got {val!r}")
        for name, val, lo in (("max_newton", max_newton, 1), ("max_cg", max_cg, 1),
                              ("max_backtrack", max_backtrack, 0)):
            if not (isinstance(val, int) and val >= lo):
                raise ValueError(f"FFTRVE {name} must be an integer >= {lo}, got {val!r}")
        self.max_backtrack = max_backtrack
        self.grid = _grid_of(microstructure)
        self.n_voxels = self.grid[0] * self.grid[1] * self.grid[2]
        self.tol, self.cg_tol, self.tangent_tol = float(tol), float(cg_tol), float(tangent_tol)
        self.max_newton, self.max_cg = max_newton, max_cg
        self.microstructure = microstructure

        if isinstance(params, Material):
            if substep_tol:
                raise ValueError("FFTRVE substep_tol applies to the crystal built from parameters; "
                                 "set it on the voxel material given instead")
            self.voxel = params
        else:
            from fe2nn.micro.crystal import SingleCrystal, load_params

            if isinstance(params, str):
                params = load_params(params)
            if not hasattr(microstructure, "voxel_orientations"):
                raise ValueError("FFTRVE with crystal parameters needs a Microstructure "
                                 "(with voxel_orientations()), not a bare grid")
            self.voxel = SingleCrystal(params, microstructure.voxel_orientations(), self.device,
                                       substep_tol=substep_tol)
        nv = getattr(self.voxel, "n_voxels", None)
        if nv is None and hasattr(self.voxel, "orientations"):
            nv = int(self.voxel.orientations.shape[0])
        if nv is not None and nv not in (1, self.n_voxels):
            raise ValueError(f"voxel material describes {nv} voxels but the grid {self.grid} has "
                             f"{self.n_voxels}")
        self._voxel_names = tuple(self.voxel.initial_state(1).keys())
        self._has_p = "p" in self._voxel_names
        self._build_fourier()
        self._C_initial: Optional[torch.Tensor] = None
        self._chi_initial: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ Fourier set-up
    def _build_fourier(self) -> None:
        """Cache unit wave directions n (3, N1, N2, N3//2+1) and Parseval weights."""
        N1, N2, N3 = self.grid
        dev, dt = self.device, self.dtype

        def freq(N, real=False):
            k = torch.fft.rfftfreq(N, d=1.0 / N) if real else torch.fft.fftfreq(N, d=1.0 / N)
            k = k.to(dtype=dt, device=dev)
            nyq = (k.abs() == N // 2) if N % 2 == 0 else torch.zeros_like(k, dtype=torch.bool)
            return k / N, nyq  # cubic voxels: wave vector ~ k / N per direction

        (f1, q1), (f2, q2), (f3, q3) = freq(N1), freq(N2), freq(N3, real=True)
        xi = torch.stack(torch.meshgrid(f1, f2, f3, indexing="ij"))
        nyq = torch.stack(torch.meshgrid(q1, q2, q3, indexing="ij"))
        # A mode whose components are all 0 or Nyquist is its own conjugate: keep its wave
        # vector (Gamma is even in n).  In any other mode the sign of a Nyquist component is
        # ambiguous (its conjugate partner would need the other sign): drop that component
        # (the real Nyquist mode has zero derivative at the grid points).
        self_conj = ((xi == 0) | nyq).all(0)
        xi = torch.where(nyq & ~self_conj, torch.zeros_like(xi), xi)
        norm = torch.linalg.norm(xi, dim=0)
        self._n = torch.where(norm > 0, xi / norm.clamp(min=1e-300), torch.zeros_like(xi))
        w = torch.full((N3 // 2 + 1,), 2.0, dtype=dt, device=dev)
        w[0] = 1.0
        if N3 % 2 == 0:
            w[-1] = 1.0
        self._w = w  # rfft half-spectrum multiplicity along the last axis

    def _rfft(self, f: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfftn(f, dim=_DIMS)

    def _irfft(self, f: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfftn(f, s=self.grid, dim=_DIMS)

    def _traction(self, s_hat: torch.Tensor):
        """t = s_hat . n (..., 3 grid tensors) from Mandel spectra (..., 6, N1, N2, N3r)."""
        n1, n2, n3 = self._n
        s0, s1, s2, s3, s4, s5 = s_hat.unbind(-4)
        t1 = s0 * n1 + _A * (s5 * n2 + s4 * n3)
        t2 = s1 * n2 + _A * (s5 * n1 + s3 * n3)
        t3 = s2 * n3 + _A * (s4 * n1 + s3 * n2)
        return t1, t2, t3

    def _green_hat(self, s_hat: torch.Tensor, inv_mu0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        """Gamma0 : s in Fourier space; inv_mu0, c0 broadcast against (..., N1, N2, N3r)."""
        n1, n2, n3 = self._n
        t1, t2, t3 = self._traction(s_hat)
        cnt = c0 * (n1 * t1 + n2 * t2 + n3 * t3)
        v1 = (t1 - cnt * n1) * inv_mu0
        v2 = (t2 - cnt * n2) * inv_mu0
        v3 = (t3 - cnt * n3) * inv_mu0
        return torch.stack([n1 * v1, n2 * v2, n3 * v3, _A * (n2 * v3 + n3 * v2),
                            _A * (n1 * v3 + n3 * v1), _A * (n1 * v2 + n2 * v1)], dim=-4)

    def _rms_spectrum(self, sq: torch.Tensor) -> torch.Tensor:
        """sqrt(mean over voxels) from |f_hat|^2 summed over components (..., N1, N2, N3r)."""
        return torch.sqrt((sq * self._w).sum(_DIMS)) / self.n_voxels

    def equilibrium_residual(self, s_hat: torch.Tensor) -> torch.Tensor:
        """||G sigma|| / ||sigma|| from the stress spectrum (..., 6, N1, N2, N3r) -> (...)."""
        t1, t2, t3 = self._traction(s_hat)
        n1, n2, n3 = self._n
        tt = t1.abs() ** 2 + t2.abs() ** 2 + t3.abs() ** 2
        nt = (n1 * t1 + n2 * t2 + n3 * t3).abs() ** 2
        num = self._rms_spectrum(2.0 * tt - nt)
        den = self._rms_spectrum((s_hat.abs() ** 2).sum(-4))
        return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(den))

    # ------------------------------------------------------------------ linear solver
    @staticmethod
    def _reference(K: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """1/mu0 and (lam0+mu0)/(lam0+2mu0) of the isotropic projection of the mean tangent.

        K: (b, 6, 6, N1, N2, N3) -> two (b,) tensors.
        """
        Km = K.mean(_DIMS)
        vol = Km[:, :3, :3].sum((-1, -2)) / 3.0  # 3 kappa0
        tr = torch.diagonal(Km, dim1=-2, dim2=-1).sum(-1)
        two_mu = ((tr - vol) / 5.0).clamp(min=1e-300)
        kappa = (vol / 3.0).clamp(min=1e-300)
        mu = 0.5 * two_mu
        lam = kappa - 2.0 * mu / 3.0
        return 1.0 / mu, (lam + mu) / (lam + 2.0 * mu)

    @staticmethod
    def _apply_K(K: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """K (b, 6, 6, *grid) applied to fields x (b, m, 6, *grid)."""
        Kj = K.unsqueeze(1)  # (b, 1, 6, 6, *grid)
        out = Kj[:, :, :, 0] * x[:, :, 0:1]
        for j in range(1, 6):  # six fused products over whole fields (faster than einsum)
            out.addcmul_(Kj[:, :, :, j], x[:, :, j:j + 1])
        return out

    def _pcg(self, K: torch.Tensor, s: torch.Tensor, tol: torch.Tensor,
             s_hat: Optional[torch.Tensor] = None):
        """Compatible zero-mean x (b, m, 6, *grid) with div(s + K x) = 0, K symmetric (PCG).

        Preconditioned by Gamma0 of the isotropic reference medium.  Convergence: the Gamma0
        norm of the residual, sqrt(<s, Gamma0 s>), reduced by ``tol`` (b, m) relative to its
        initial value.  Returns x, iterations (b, m), converged (b, m), initial <s, Gamma0 s>.
        """
        inv_mu0, c0 = self._reference(K)
        shape = (-1, 1, 1, 1, 1)
        inv_mu0, c0 = inv_mu0.reshape(shape), c0.reshape(shape)
        red = (2, 3, 4, 5)
        s = s.clone()
        if s_hat is None:
            s_hat = self._rfft(s)
        d = -self._irfft(self._green_hat(s_hat, inv_mu0, c0))
        rz = -(s * d).sum(red)
        rz0 = rz.clone()
        goal = (tol * tol) * rz
        x = torch.zeros_like(s)
        p = d
        its = torch.zeros(rz.shape, dtype=torch.long, device=s.device)
        conv = rz <= goal
        broken = torch.zeros_like(conv)
        for _ in range(self.max_cg):
            if bool(conv.all()):
                break
            q = self._apply_K(K, p)
            pq = (p * q).sum(red)
            bad = (pq <= 0) & ~conv
            broken |= bad
            live = ~conv & ~broken
            alpha = torch.where(live, rz / torch.where(live, pq, 1.0), 0.0)
            a = alpha[..., None, None, None, None]
            x += a * p
            s += a * q
            d = -self._irfft(self._green_hat(self._rfft(s), inv_mu0, c0))
            rz_new = -(s * d).sum(red)
            its += live
            beta = torch.where(live, rz_new / torch.where(live, rz, 1.0), 0.0)
            p = d + beta[..., None, None, None, None] * p
            rz = torch.where(live, rz_new, rz)
            conv = conv | (live & (rz <= goal)) | broken
        return x, its, conv & ~broken, rz0

    def _linear_solve(self, K: torch.Tensor, s: torch.Tensor, tol,
                      s_hat: Optional[torch.Tensor] = None, max_refine: int = 30):
        """Compatible zero-mean x with div(s + K x) = 0 for a possibly non-symmetric K.

        PCG on the symmetric part of K; a non-symmetric remainder (crystal plasticity tangents
        are asymmetric at ~1e-5) is removed by defect correction: the residual with the full K
        is re-solved with the symmetric part until its Gamma0 norm dropped by ``tol`` (a float
        or per RVE (b,)).  Returns x, total PCG iterations (b, m), converged (b, m).
        """
        b, m = s.shape[:2]
        tol = torch.as_tensor(tol, dtype=self.dtype, device=self.device).expand(b)[:, None].expand(b, m)
        Ks = 0.5 * (K + K.transpose(1, 2))
        asym = ((K - Ks).abs().amax((1, 2, 3, 4, 5))
                / K.abs().amax((1, 2, 3, 4, 5)).clamp(min=1e-300))[:, None].expand(b, m)
        symmetric = asym <= 1e-13
        # no point solving beyond what the asymmetry allows before correcting the defect
        floor = torch.where(symmetric, tol, torch.maximum(tol, (10.0 * asym).clamp(1e-6, 1e-2)))
        x, its, ok, rz0 = self._pcg(Ks, s, floor, s_hat)
        if bool(symmetric.all()):
            return x, its, ok
        rz0 = rz0.clamp(min=1e-300)
        for _ in range(max_refine):
            r = s + self._apply_K(K, x)
            rel = torch.sqrt(self._gamma_norm2(Ks, r).clamp(min=0.0) / rz0)
            done = (rel <= tol) | symmetric | ~ok
            if bool(done.all()):
                return x, its, ok & ((rel <= tol) | symmetric)
            inner = (tol / rel.clamp(min=1e-300)).clamp(max=0.5)
            inner = torch.maximum(inner, floor)
            dx, dits, dok, _ = self._pcg(Ks, r, inner)
            x = x + torch.where(done[..., None, None, None, None], 0.0, dx)
            its = its + torch.where(done, 0, dits)
            ok = ok & (dok | done)
        return x, its, ok & symmetric

    def _gamma_norm2(self, K: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """<s, Gamma0 s> (b, m) with the reference medium of K."""
        inv_mu0, c0 = self._reference(K)
        shape = (-1, 1, 1, 1, 1)
        g = self._irfft(self._green_hat(self._rfft(s), inv_mu0.reshape(shape), c0.reshape(shape)))
        return (s * g).sum((2, 3, 4, 5))

    # ------------------------------------------------------------------ voxel material
    def _evaluate(self, eps: torch.Tensor, dt_pts: torch.Tensor, vstate: State):
        """Voxel material on fields eps (b, 6, *grid) -> sigma (b, 6, *grid), K (b, 6, 6, *grid), state."""
        b = eps.shape[0]
        nv = self.n_voxels
        pts = eps.reshape(b, 6, nv).transpose(1, 2).reshape(b * nv, 6)
        flat = {k: v.reshape((b * nv,) + v.shape[2:]) for k, v in vstate.items()}
        try:
            sig, K, new = self.voxel.update(pts, dt_pts, flat)
        except MaterialConvergenceError as err:
            failed = err.failed
            if failed is None:
                mask = torch.ones(b, dtype=torch.bool, device=eps.device)
            else:
                mask = failed.to(eps.device).reshape(b, nv).any(1)
            raise _Failed(mask, f"voxel material failed: {err}") from err
        bad = ~(torch.isfinite(sig).reshape(b, -1).all(1) & torch.isfinite(K).reshape(b, -1).all(1))
        if bool(bad.any()):
            raise _Failed(bad, "voxel material returned non-finite stress or tangent")
        sig = sig.reshape(b, nv, 6).transpose(1, 2).reshape((b, 6) + self.grid)
        K = K.reshape(b, nv, 36).permute(0, 2, 1).reshape((b, 6, 6) + self.grid)
        new = {k: v.reshape((b, nv) + v.shape[1:]) for k, v in new.items()}
        return sig, K, new

    # ------------------------------------------------------------------ nonlinear solve
    def _trial(self, idx: torch.Tensor, eps: torch.Tensor, dt_pts: torch.Tensor, vstate: State,
               fields: Optional[torch.Tensor] = None):
        """Evaluate RVEs ``idx`` at fields eps (len(idx), 6, *grid).

        Returns sigma, K, state, stress spectrum and residual; RVEs whose voxel material failed
        get residual +inf (their other outputs are meaningless).  A voxel material that keeps its
        last update (``keeps_last_update``: the crystal's sticky substeps) is called on every RVE
        of the increment, the others at the fields they were last evaluated at (``fields``
        (B, 6, *grid), kept by :meth:`_solve`; None: RVEs ``idx`` alone), so that what it keeps
        stays matched point by point: its kept substeps and roots then carry through the Newton
        iterations of the cells and on to the next macro iteration, and the converged cells cost
        a kept (one-residual) evaluation.
        """
        if fields is not None:
            fields[idx] = eps
            if idx.shape[0] < fields.shape[0]:
                try:
                    sig, K, new = self._evaluate(fields, dt_pts, vstate)
                except _Failed:
                    pass  # sort the failed cells out below, on the RVEs asked for alone
                else:
                    sig, K = sig[idx], K[idx]
                    s_hat = self._rfft(sig)
                    return sig, K, {k: v[idx] for k, v in new.items()}, s_hat, self.equilibrium_residual(s_hat)
        nv = self.n_voxels
        sub = {k: v[idx] for k, v in vstate.items()}
        dsub = dt_pts.reshape(-1, nv)[idx].reshape(-1)
        try:
            sig, K, new = self._evaluate(eps, dsub, sub)
        except _Failed as f:
            ok = ~f.mask
            b = idx.shape[0]
            sig = torch.zeros_like(eps)
            K = torch.zeros((b, 6, 6) + self.grid, dtype=self.dtype, device=self.device)
            res = torch.full((b,), math.inf, dtype=self.dtype, device=self.device)
            s_hat = torch.zeros(eps.shape[:-1] + (eps.shape[-1] // 2 + 1,),
                                dtype=torch.complex128, device=self.device)
            new = {k: v.clone() for k, v in sub.items()}
            if bool(ok.any()):
                s2, K2, n2, h2, r2 = self._trial(idx[ok], eps[ok], dt_pts, vstate)
                sig[ok], K[ok], s_hat[ok], res[ok] = s2, K2, h2, r2
                for k in new:
                    new[k][ok] = n2[k]
            return sig, K, new, s_hat, res
        s_hat = self._rfft(sig)
        return sig, K, new, s_hat, self.equilibrium_residual(s_hat)

    def _solve(self, E: torch.Tensor, dt: torch.Tensor, vstate: State, guess: torch.Tensor,
               u: Optional[torch.Tensor] = None, target: Optional[torch.Tensor] = None):
        """Newton on the strain field with macro strain E (B, 6), from the field ``guess``.

        Mixed control: the macro strain components ``u`` (indices) are unknown and their mean
        stresses must equal ``target[:, u]``.  They are Newton unknowns too: each correction
        solves, in one batched PCG, the fluctuation response to the residual and to unit macro
        strains e_j (j in u), then picks the macro increment that meets the stress targets in
        the linearised problem (an exact Newton step up to the CG tolerances).
        Each correction is damped by backtracking (halving, at most ``max_backtrack`` times)
        until the residual decreases (a Newton direction is a descent direction of it); full
        steps are taken near the solution.  Converged when the equilibrium residual is below
        ``tol`` and (mixed) every stress error is below ``tol * ||sigma||`` (RMS over the cell).
        Returns sigma, K, voxel state, eps fields, Newton and CG iteration counts (B,).
        Raises MaterialConvergenceError with the (B,) mask of failed RVEs.
        """
        B = E.shape[0]
        nv = self.n_voxels
        mixed = u is not None and u.numel() > 0
        eps = guess - guess.mean(_DIMS, keepdim=True) + E[:, :, None, None, None]
        fields = eps.clone() if self.voxel.keeps_last_update else None  # where each cell was last evaluated
        out_sig = torch.empty_like(eps)
        out_K = torch.empty((B, 6, 6) + self.grid, dtype=self.dtype, device=self.device)
        out_state: State = {}
        newton = torch.zeros(B, dtype=torch.long, device=self.device)
        cg = torch.zeros(B, dtype=torch.long, device=self.device)
        active = torch.arange(B, device=self.device)
        dt_pts = dt.repeat_interleave(nv)

        def fail(mask_active, msg):
            mask = torch.zeros(B, dtype=torch.bool, device=self.device)
            mask[active[mask_active]] = True
            return MaterialConvergenceError(f"FFT RVE: {msg} for {int(mask.sum())} RVE(s)", mask)

        def stress_error(sig, idx):
            if not mixed:
                return torch.zeros(idx.shape[0], dtype=self.dtype, device=self.device)
            sbar = sig.mean(_DIMS)
            err = (sbar[:, u] - target[idx][:, u]).abs().amax(1)
            rms = torch.sqrt((sig * sig).sum(1).mean(_DIMS))  # >= |<sigma>|, > 0 unless sigma = 0
            return torch.where(err > 0, err / rms.clamp(min=1e-300), torch.zeros_like(err))

        sig, K, new, s_hat, res = self._trial(active, eps, dt_pts, vstate, fields)
        if not bool(torch.isfinite(res).all()):
            raise fail(~torch.isfinite(res), "voxel material failed at the initial guess")
        serr = stress_error(sig, active)
        for it in range(self.max_newton + 1):
            done = (res <= self.tol) & (serr <= self.tol)
            if bool(done.any()):
                idx = active[done]
                out_sig[idx] = sig[done]
                out_K[idx] = K[done]
                for k, v in new.items():
                    if k not in out_state:
                        out_state[k] = torch.empty((B,) + v.shape[1:], dtype=v.dtype, device=v.device)
                    out_state[k][idx] = v[done]
            if bool(done.all()):
                break
            keep = ~done
            if it == self.max_newton:
                raise fail(keep, f"Newton not converged in {self.max_newton} iterations (equilibrium "
                                 f"residual {float(res[keep].max()):.3g}, stress error "
                                 f"{float(serr[keep].max()):.3g}, tol {self.tol:.3g})")
            active, sig, K, s_hat = active[keep], sig[keep], K[keep], s_hat[keep]
            res, serr = res[keep], serr[keep]
            # inexact Newton: no need to solve beyond 0.1 * tol / residual (per RVE)
            eta = (0.1 * self.tol / res.clamp(min=1e-300)).clamp(min=self.cg_tol, max=0.5)
            if mixed:
                rhs = torch.cat([sig.unsqueeze(1), K[:, :, u].transpose(1, 2)], dim=1)
                x, its, ok = self._linear_solve(K, rhs, eta)
                ok = ok.all(1, keepdim=True)
                dx, chi = x[:, 0], x[:, 1:]
                # linearised mean stress: sbar + mean(K dx) + C_k[:, :, u] dE_u
                Cu = (rhs[:, 1:] + self._apply_K(K, chi)).mean(_DIMS)  # (b, nu, 6) = C[:, :, u]^T
                lin = (sig + self._apply_K(K, dx.unsqueeze(1))[:, 0]).mean(_DIMS)
                dEu = torch.linalg.solve(Cu[:, :, u].transpose(1, 2),
                                         target[active][:, u] - lin[:, u])
                unit = torch.zeros(dEu.shape + (6,), dtype=self.dtype, device=self.device)
                unit[:, torch.arange(u.numel(), device=self.device), u] = 1.0
                dx = dx + torch.einsum("bj,bjixyz->bixyz", dEu,
                                       chi + unit[..., None, None, None])
            else:
                dx, its, ok = self._linear_solve(K, sig.unsqueeze(1), eta, s_hat.unsqueeze(1))
                dx = dx[:, 0]
            newton[active] += 1
            cg[active] += its.max(1).values  # PCG iterations (the batch of systems runs together)
            if not bool(ok.all()):
                raise fail(~ok[:, 0], f"CG not converged in {self.max_cg} iterations "
                                      "(or tangent not positive definite)")
            base = eps[active]
            merit = res + serr
            step = torch.ones(active.shape[0], dtype=self.dtype, device=self.device)
            trial = base + dx
            sig, K, new, s_hat, res = self._trial(active, trial, dt_pts, vstate, fields)
            serr = stress_error(sig, active)
            for _ in range(self.max_backtrack):
                worse = ~(res + serr < (1.0 - 1e-4 * step) * merit)
                if not bool(worse.any()):
                    break
                step[worse] *= 0.5
                w = worse.nonzero().flatten()
                trial[w] = base[w] + step[w, None, None, None, None] * dx[w]
                s2, K2, n2, h2, r2 = self._trial(active[w], trial[w], dt_pts, vstate, fields)
                sig[w], K[w], s_hat[w], res[w] = s2, K2, h2, r2
                serr[w] = stress_error(s2, active[w])
                for k in new:
                    new[k][w] = n2[k]
            if not bool(torch.isfinite(res).all()):
                raise fail(~torch.isfinite(res), "voxel material failed along the Newton step")
            eps[active] = trial
        return out_sig, out_K, out_state, eps, newton, cg

    def homogenized_tangent(self, K: torch.Tensor, tol: Optional[float] = None,
                            keep_fluctuations: bool = False):
        """Consistent homogenised tangent (B, 6, 6) from voxel tangents K (B, 6, 6, *grid).

        Solves the linearised cell problem for the six unit macro strains in one batched PCG.
        Returns (tangent, PCG iterations (B,) = max over the six).
        """
        tol = self.tangent_tol if tol is None else tol
        s = K.transpose(1, 2)  # (B, m, i, *grid): stress of unit macro strain m
        x, its, ok = self._linear_solve(K, s, tol)
        if not bool(ok.all()):
            mask = ~ok.all(1)
            raise MaterialConvergenceError(
                f"FFT RVE: tangent CG not converged in {self.max_cg} iterations for "
                f"{int(mask.sum())} RVE(s)", mask)
        stress = (s + self._apply_K(K, x)).mean(_DIMS)  # (B, m, i)
        if keep_fluctuations:
            self._last_fluctuations = x
        return stress.transpose(1, 2).contiguous(), its.max(1).values

    # ------------------------------------------------------------------ Material contract
    def _field(self, flat: torch.Tensor) -> torch.Tensor:
        b = flat.shape[0]
        return flat.transpose(1, 2).reshape((b, 6) + self.grid)

    def _flat(self, field: torch.Tensor) -> torch.Tensor:
        b = field.shape[0]
        return field.reshape(b, 6, self.n_voxels).transpose(1, 2).contiguous()

    @property
    def keeps_last_update(self) -> bool:  # type: ignore[override]
        return self.voxel.keeps_last_update

    def forget_last_update(self) -> None:
        self.voxel.forget_last_update()

    def initial_tangent(self) -> torch.Tensor:
        """Homogenised tangent (6, 6) of the virgin RVE at zero strain (cached)."""
        if self._C_initial is None:
            v0 = self.voxel.initial_state(self.n_voxels)
            v0 = {k: v.reshape((1, self.n_voxels) + v.shape[1:]) for k, v in v0.items()}
            zero = torch.zeros((1, 6) + self.grid, dtype=self.dtype, device=self.device)
            _, K, _ = self._evaluate(zero, torch.ones(self.n_voxels, dtype=self.dtype,
                                                      device=self.device), v0)
            self._C_initial = self.homogenized_tangent(K, keep_fluctuations=True)[0][0]
            # elastic localisation: fluctuation fields of the six unit macro strains (6, 6, *grid)
            self._chi_initial = self._last_fluctuations[0]
            del self._last_fluctuations
        return self._C_initial

    def initial_state(self, n: int) -> State:
        nv = self.n_voxels
        v0 = self.voxel.initial_state(nv)
        st: State = {
            "strain": torch.zeros(n, 6, dtype=self.dtype, device=self.device),
            "stress": torch.zeros(n, 6, dtype=self.dtype, device=self.device),
            "tangent": self.initial_tangent().expand(n, 6, 6).clone(),
            "strain_field": torch.zeros(n, nv, 6, dtype=self.dtype, device=self.device),
            "dstrain_field": torch.zeros(n, nv, 6, dtype=self.dtype, device=self.device),
        }
        if self._has_p:
            st["p"] = torch.zeros(n, dtype=self.dtype, device=self.device)
        for k, v in v0.items():
            st[_VOXEL + k] = v.unsqueeze(0).expand((n,) + v.shape).clone()
        return st

    def _voxel_state(self, state: State) -> State:
        return {k[len(_VOXEL):]: v for k, v in state.items() if k.startswith(_VOXEL)}

    def _increment(self, E: torch.Tensor, dt, state: State, guess: torch.Tensor,
                   u: Optional[torch.Tensor] = None, target: Optional[torch.Tensor] = None):
        B = E.shape[0]
        dtv = self.as_dt(dt, B)
        sig, K, vnew, eps, newton, cg = self._solve(E, dtv, self._voxel_state(state), guess, u, target)
        C, tcg = self.homogenized_tangent(K)
        stress = sig.mean(_DIMS)
        E = E.clone()
        if u is not None:
            E[:, u] = eps.mean(_DIMS)[:, u]
        eps_flat = self._flat(eps)
        deps = eps_flat - state["strain_field"]
        #: converged stress field (B, Nvox, 6) [Pa] of the last update (for output/plots)
        self.stress_field = self._flat(sig)
        hm = hill_mandel_residual(self.stress_field, deps)
        new: State = {"strain": E, "stress": stress, "tangent": C, "strain_field": eps_flat,
                      "dstrain_field": deps}
        if self._has_p:
            new["p"] = vnew["p"].mean(1)
        for k, v in vnew.items():
            new[_VOXEL + k] = v
        self.info = {"hill_mandel": hm, "newton_iterations": newton, "iterations": newton,
                     "cg_iterations": cg, "tangent_cg_iterations": tcg}
        return stress, C, new, E

    def _predictor(self, E: torch.Tensor, state: State) -> torch.Tensor:
        """Initial strain field of an increment to macro strain E (B, 6).

        The last converged field plus the last increment's field, scaled by the projection
        ``s`` of the new macro increment on the last one (clamped to [0, 2]), plus the rest of
        the macro increment localised with the initial (elastic) fluctuation fields: exact
        for linear elasticity, for a proportional linear response, and for elastic unloading
        from a virgin state; a good start on monotonic plastic paths.
        """
        dE = E - state["strain"]
        dF = state["dstrain_field"]  # (B, Nvox, 6)
        dEp = dF.mean(1)
        s = ((dE * dEp).sum(1) / (dEp * dEp).sum(1).clamp(min=1e-300)).clamp(0.0, 2.0)
        s = torch.where((dEp * dEp).sum(1) > 0, s, torch.zeros_like(s))
        field = state["strain_field"] + s[:, None, None] * dF
        rest = dE - s[:, None] * dEp
        self.initial_tangent()  # makes sure the elastic localisation is cached
        chi = torch.einsum("bj,jixyz->bixyz", rest, self._chi_initial)
        return self._field(field) + rest[:, :, None, None, None] + chi

    def _check(self, strain, state: State) -> torch.Tensor:
        E = self.as_tensor(strain)
        if E.ndim != 2 or E.shape[1] != 6:
            raise ValueError(f"macro strain must have shape (B, 6), got {tuple(E.shape)}")
        if state["strain_field"].shape[0] != E.shape[0]:
            raise ValueError(f"state holds {state['strain_field'].shape[0]} RVEs, strain {E.shape[0]}")
        return E

    def update(self, strain: torch.Tensor, dt, state: State) -> Response:
        """Strain-controlled increment to macro strain (B, 6); see the module docstring."""
        E = self._check(strain, state)
        stress, C, new, _ = self._increment(E, dt, state, self._predictor(E, state))
        return stress, C, new

    def update_mixed(self, strain, stress_target, stress_mask, dt, state: State):
        """Mixed macro control: the stress components ``stress_mask`` (6,) bool are prescribed.

        ``strain`` (B, 6) gives the prescribed strain components (its masked entries are
        ignored); ``stress_target`` (B, 6) or (6,) the prescribed stresses [Pa] (unmasked
        entries ignored).  The unknown macro strain components are Newton unknowns of the cell
        problem (see :meth:`_solve`; predictor: the tangent of the last converged increment);
        converged when also ``|<sigma>_i - target_i| <= tol * ||sigma||`` (RMS stress of the
        cell) on the masked ones.
        Returns stress (B, 6), tangent (B, 6, 6) (strain-controlled), new state, strain (B, 6).
        """
        E = self._check(strain, state).clone()
        T = self.as_tensor(stress_target).expand_as(E)
        m = torch.as_tensor(stress_mask, dtype=torch.bool, device=self.device)
        if m.shape != (6,):
            raise ValueError(f"stress_mask must have shape (6,), got {tuple(m.shape)}")
        if not bool(m.any()):
            stress, C, new = self.update(E, dt, state)
            return stress, C, new, E
        u, k = m.nonzero().flatten(), (~m).nonzero().flatten()
        E_old, S_old, C_old = state["strain"], state["stress"], state["tangent"]
        dE = E - E_old
        rhs = (T - S_old)[:, u] - (C_old[:, u][:, :, k] @ dE[:, k, None])[..., 0]
        E[:, u] = E_old[:, u] + torch.linalg.solve(C_old[:, u][:, :, u], rhs)
        return self._increment(E, dt, state, self._predictor(E, state), u, T)


class _Failed(Exception):
    def __init__(self, mask: torch.Tensor, msg: str):
        super().__init__(msg)
        self.mask = mask


def uniaxial_stress_path(rve: FFTRVE, component: int = 0, strain_rate: float = 1e-3,
                         max_strain: float = 0.02, n_steps: int = 20, n_rves: int = 1,
                         progress: bool = False) -> Dict[str, torch.Tensor]:
    """Uniaxial stress: strain ``component`` ramps to ``max_strain`` at ``strain_rate`` [1/s]
    in ``n_steps`` equal increments, all other macro stress components are zero.

    Returns tensors: "time" (T+1,), "strain" (T+1, B, 6), "stress" (T+1, B, 6) [Pa],
    "p" (T+1, B) (when the voxel material has it), "newton_iterations", "cg_iterations",
    "tangent_cg_iterations", "hill_mandel" (T, B), "wall_time" (T,) [s] ("time" and
    "wall_time" on the CPU, the rest on the RVE's device).
    """
    if not (0 <= int(component) < 6):
        raise ValueError(f"component must be a Mandel index 0..5, got {component}")
    if not (strain_rate > 0 and max_strain != 0 and n_steps >= 1 and n_rves >= 1):
        raise ValueError("uniaxial_stress_path needs strain_rate > 0, max_strain != 0, n_steps >= 1, "
                         "n_rves >= 1")
    mask = torch.ones(6, dtype=torch.bool)
    mask[component] = False
    dt = abs(max_strain) / strain_rate / n_steps
    state = rve.initial_state(n_rves)
    zeros = torch.zeros(n_rves, 6, dtype=rve.dtype, device=rve.device)
    out = {k: [] for k in ("strain", "stress", "p", "newton_iterations", "cg_iterations",
                           "tangent_cg_iterations", "hill_mandel", "wall_time")}
    out["strain"].append(zeros.clone())
    out["stress"].append(zeros.clone())
    if "p" in state:
        out["p"].append(state["p"].clone())
    steps = range(1, n_steps + 1)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"FFT RVE {rve.grid}", leave=False)
    for i in steps:
        E = state["strain"].clone()
        E[:, component] = max_strain * i / n_steps
        t0 = time.perf_counter()
        stress, _, state, E = rve.update_mixed(E, zeros, mask, dt, state)
        if rve.device.type == "cuda":
            torch.cuda.synchronize(rve.device)
        out["wall_time"].append(torch.tensor(time.perf_counter() - t0, dtype=torch.float64))
        out["strain"].append(E.clone())
        out["stress"].append(stress)
        if "p" in state:
            out["p"].append(state["p"].clone())
        for k in ("newton_iterations", "cg_iterations", "tangent_cg_iterations", "hill_mandel"):
            out[k].append(rve.info[k])
    res = {k: torch.stack(v) for k, v in out.items() if v}
    res["time"] = torch.arange(n_steps + 1, dtype=rve.dtype) * dt
    return res
