"""FCC single-crystal plasticity (small strain, rate dependent, phenomenological power law).

Model (sample frame, Mandel notation, SI units)::

    sigma      = C : (eps - eps_p)                      C: cubic stiffness rotated by the orientation
    eps_p_dot  = sum_a gdot_a P_a                       P_a = sym(d_a x n_a), 12 {111}<110> systems
    gdot_a     = gdot0 |tau_a / xi_a|^n sign(tau_a)     tau_a = P_a : sigma
    xi_a_dot   = h0 |1 - xi_a/xi_inf|^a sign(1 - xi_a/xi_inf) sum_b h_ab |gdot_b|

Time integration: backward Euler.  The local unknowns are the end-of-step
stress (6) and slip resistances (12); the 18 residuals, both in Pa, are::

    R_sigma = sigma - C : (eps - eps_p_old) + sum_a dgamma_a(sigma, xi) C : P_a
    R_xi    = xi - xi_old - h0 phi(xi) H |dgamma(sigma, xi)|,  dgamma = dt gdot

They are solved for all points at once by Newton's method with a backtracking
line search on |R|^2 (the power law with n ~ 20 is stiff).  The initial guess is
the elastic predictor pulled back towards the previous stress until no slip
system exceeds the resolved-stress ratio needed to absorb the strain increment
by slip alone.  A point is converged when max|R| <= ``rtol * xi0`` (default
rtol = 1e-10, i.e. ~3 mPa for aluminium, far below any physical stress scale).
Points whose Newton iteration fails (``max_iter``, default 16, or a failed line
search) continue with adaptive substeps (halved on failure, doubled after
success) down to 1/``max_substeps`` of the increment; only then is
MaterialConvergenceError raised, with the mask of the failed points.

The consistent tangent follows from implicit differentiation of R = 0:
``d(sigma, xi)/d eps = J^-1 [C; 0]`` with the converged Jacobian J, chained
exactly through the substeps.

Sticky substeps: which substeps fail depends on the strain increment, so the
stress would jump where a small change of the increment changes the partition
(measured on copper grains: jumps of up to 90x the smooth change per 2e-7 of strain), and a
macro Newton iteration stalls on them.  For large increments the backward-Euler
problem can also have more than one root (copper, first step: two roots 1 % apart
in a grain's stress), and which one the local Newton finds depends on its start.
So the partition of each point's last successful update is kept with the solution
at each substep end, and a later call from the same old state and time step (the
next macro Newton iteration) uses the partition or refines it, never coarsens it,
and starts each kept substep's Newton iteration from the kept solution; the stress
is then a smooth function of the increment within a load step.  A first call from
a state integrates as described above, so paths integrated step by step
(Taylor-RVE datasets) do not depend on this.

Error control (``substep_tol`` > 0; off by default): every converged substep is checked
against the same substep taken in two halves (step doubling), and is rejected (halved, as
a failed one) when the two differ by more than ``substep_tol`` relative to max(|sigma|, xi0)
in stress or relative to xi0 in the slip resistances.  That bounds the local time-integration
error and also rejects a spurious root of a large step, which sits far from the root that
the halves follow (copper, first bar step: 1-2.6 % from the step-converged stress, against
0.2-0.4 % for the other root).  It costs two more local solves per accepted substep.  A
substep at the smallest fraction (1/``max_substeps``) is accepted unchecked, and so is a substep of
a kept partition (sticky substeps): it was checked when it was first taken, and a check that
flipped between macro Newton iterations would break the smoothness that keeping it gives.

Interaction matrix: 12 x 12, classified geometrically (self, coplanar,
collinear, Hirth lock, glissile junction I/II, Lomer lock), coefficient order as
in DAMASK's ``h_sl-sl`` for cF (self, coplanar, collinear, Hirth, glissile I,
glissile II, Lomer).  Glissile I: the junction Burgers vector lies in the
forest (acting) system's plane; glissile II: in the reacting system's plane.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import torch

from fe2nn import mandel
from fe2nn.config import load_toml, non_negative, parse, positive
from fe2nn.errors import UserError
from fe2nn.materials.base import Material, MaterialConvergenceError, Response, State

PARAMS_DIR = Path(__file__).resolve().parent / "params"

#: 12 FCC {111}<110> slip systems (direction, plane normal), Thompson-tetrahedron order.
FCC_SLIP_SYSTEMS = np.array(
    [
        [0, 1, -1, 1, 1, 1], [-1, 0, 1, 1, 1, 1], [1, -1, 0, 1, 1, 1],
        [0, -1, -1, -1, -1, 1], [1, 0, 1, -1, -1, 1], [-1, 1, 0, -1, -1, 1],
        [0, -1, 1, 1, -1, -1], [-1, 0, -1, 1, -1, -1], [1, 1, 0, 1, -1, -1],
        [0, 1, 1, -1, 1, -1], [1, 0, -1, -1, 1, -1], [-1, -1, 0, -1, 1, -1],
    ],
    dtype=float,
)

INTERACTION_NAMES = ("self", "coplanar", "collinear", "Hirth", "glissile I", "glissile II", "Lomer")


def interaction_types() -> np.ndarray:
    """(12, 12) int array of interaction types 0..6 (index into INTERACTION_NAMES).

    Row = reacting system (hardened), column = forest system (slipping).
    """
    d = FCC_SLIP_SYSTEMS[:, :3]
    nrm = FCC_SLIP_SYSTEMS[:, 3:]
    T = np.zeros((12, 12), dtype=np.int64)
    for a in range(12):  # geometry set-up only (144 pairs), not a hot path
        for b in range(12):
            if a == b:
                t = 0
            elif np.allclose(np.cross(nrm[a], nrm[b]), 0):
                t = 1
            elif np.allclose(np.cross(d[a], d[b]), 0):
                t = 2
            elif abs(d[a] @ d[b]) < 1e-12:
                t = 3
            else:
                junction = d[a] + d[b] if np.isclose((d[a] + d[b]) @ (d[a] + d[b]), 2.0) else d[a] - d[b]
                if abs(junction @ nrm[b]) < 1e-12:
                    t = 4
                elif abs(junction @ nrm[a]) < 1e-12:
                    t = 5
                else:
                    t = 6
            T[a, b] = t
    return T


def _check_interaction(v) -> str | None:
    if len(v) != 7:
        return f"must have 7 values ({', '.join(INTERACTION_NAMES)}), got {len(v)}"
    if any(not math.isfinite(x) or x < 0 for x in v):
        return "values must be finite and >= 0"
    return None


@dataclass
class CrystalParams:
    """Parameters of the FCC phenomenological power-law crystal (SI units)."""

    C11: float = field(metadata=dict(doc="cubic elastic constant C11 [Pa]", check=positive))
    C12: float = field(metadata=dict(doc="cubic elastic constant C12 [Pa]"))
    C44: float = field(metadata=dict(doc="cubic elastic constant C44 [Pa]", check=positive))
    gdot0: float = field(metadata=dict(doc="reference shear rate [1/s]", check=positive))
    n: float = field(metadata=dict(doc="rate sensitivity exponent [-]", check=positive))
    a: float = field(metadata=dict(doc="hardening exponent [-]", check=positive))
    xi0: float = field(metadata=dict(doc="initial slip resistance [Pa]", check=positive))
    xi_inf: float = field(metadata=dict(doc="saturation slip resistance [Pa]", check=positive))
    h0: float = field(metadata=dict(doc="reference hardening modulus [Pa]", check=non_negative))
    interaction: List[float] = field(
        default_factory=lambda: [1.0, 1.0, 1.4, 1.4, 1.4, 1.4, 1.4],
        metadata=dict(doc="7 slip-slip interaction coefficients: " + ", ".join(INTERACTION_NAMES),
                      check=_check_interaction),
    )
    name: str = "crystal"

    def __post_init__(self) -> None:
        self.interaction = [float(x) for x in self.interaction]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending parameter."""
        for key in ("C11", "C44", "gdot0", "n", "a", "xi0", "xi_inf"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{key} = {v!r} must be a finite number > 0")
        if not (math.isfinite(self.h0) and self.h0 >= 0):
            raise ValueError(f"h0 = {self.h0!r} must be >= 0")
        if not math.isfinite(self.C12):
            raise ValueError(f"C12 = {self.C12!r} must be finite")
        if not (self.C11 > abs(self.C12) and self.C11 + 2 * self.C12 > 0):
            raise ValueError(
                f"cubic stiffness (C11={self.C11:g}, C12={self.C12:g}) is not positive definite: "
                "need C11 > |C12| and C11 + 2 C12 > 0"
            )
        if self.xi_inf < self.xi0:
            raise ValueError(f"xi_inf = {self.xi_inf:g} must be >= xi0 = {self.xi0:g}")
        msg = _check_interaction(self.interaction)
        if msg:
            raise ValueError(f"interaction {msg}")

    def with_(self, **changes) -> "CrystalParams":
        """Copy with some parameters replaced (validated)."""
        return dataclasses.replace(self, **changes)

    def interaction_matrix(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """(12, 12) hardening interaction matrix h_ab."""
        h = torch.tensor(self.interaction, dtype=dtype, device=device)
        return h[torch.as_tensor(interaction_types(), device=device)]


def load_params(name_or_path: str | Path) -> CrystalParams:
    """Crystal parameters from a bundled material name ("aluminium", "copper") or a TOML file.

    Bad files raise UserError naming the file and key.
    """
    p = Path(name_or_path)
    bundled = PARAMS_DIR / f"{name_or_path}.toml"
    if not p.suffix and bundled.is_file():
        p = bundled
    elif not p.is_file():
        known = ", ".join(sorted(q.stem for q in PARAMS_DIR.glob("*.toml")))
        raise UserError(f"{p}: crystal parameter file not found (bundled materials: {known})")
    data = load_toml(p)
    data.setdefault("name", p.stem)
    try:
        return parse(CrystalParams, data, str(p))
    except ValueError as err:
        raise UserError(f"{p}: {err}") from None


# -- orientations ----------------------------------------------------------------------
def euler_to_quaternion(euler) -> torch.Tensor:
    """Bunge Euler angles (m, 3) [rad] -> unit quaternions (m, 4) (w, x, y, z), crystal->sample."""
    e = torch.as_tensor(np.asarray(euler, dtype=float), dtype=torch.float64).reshape(-1, 3)
    R = mandel.euler_bunge_to_matrix(e[:, 0], e[:, 1], e[:, 2])
    return mandel.matrix_to_quaternion(R)


def schmid_tensors(dtype=torch.float64, device=None) -> torch.Tensor:
    """Crystal-frame Schmid tensors sym(d x n) of the 12 systems, Mandel, shape (12, 6)."""
    s = torch.as_tensor(FCC_SLIP_SYSTEMS, dtype=dtype, device=device)
    d = s[:, :3] / torch.linalg.norm(s[:, :3], dim=1, keepdim=True)
    nn = s[:, 3:] / torch.linalg.norm(s[:, 3:], dim=1, keepdim=True)
    P = 0.5 * (d[:, :, None] * nn[:, None, :] + nn[:, :, None] * d[:, None, :])
    return mandel.to_mandel(P)


class SingleCrystal(Material):
    """Batched FCC single crystal; point i uses orientation ``i % m`` (see module docstring).

    Parameters
    ----------
    params : CrystalParams
    orientations : (m, 4) unit quaternions (w, x, y, z), crystal -> sample.
    device : torch device.
    rtol : Newton tolerance, max|R| <= rtol * xi0 [-].
    max_iter : Newton iteration limit per (sub)step.
    max_substeps : a point whose local Newton fails continues with halved
        substeps (adaptive, doubled again after success; tangent chained
        exactly); below 1/max_substeps of the increment MaterialConvergenceError
        is raised with the failed mask.
    substep_tol : error control by step doubling (module doc), relative; 0 = off.

    State: "strain" (n,6), "eps_p" (n,6), "xi" (n,12) [Pa], "gamma" (n,12)
    accumulated |slip|, "p" (n,) equivalent plastic strain.  ``info``:
    "iterations" (n,) Newton iterations (all substeps), "substeps" (n,).
    """

    n_slip = 12
    keeps_last_update = True  # sticky substeps (module doc)

    def __init__(self, params: CrystalParams, orientations, device: str | torch.device = "cpu",
                 rtol: float = 1e-10, max_iter: int = 16, max_substeps: int = 1024, substep_tol: float = 0.0):
        super().__init__()
        if not isinstance(params, CrystalParams):
            raise TypeError("params must be a CrystalParams (see fe2nn.micro.crystal.load_params)")
        params.validate()
        if not (rtol > 0 and max_iter >= 1 and max_substeps >= 1):
            raise ValueError("rtol must be > 0, max_iter >= 1 and max_substeps >= 1")
        if not (math.isfinite(substep_tol) and 0.0 <= substep_tol < 1.0):
            raise ValueError(f"substep_tol must be >= 0 and < 1 (0 = no error control), got {substep_tol}")
        self.max_substeps = int(max_substeps)
        self.substep_tol = float(substep_tol)
        self.params = params
        self.device = torch.device(device)
        self.rtol = float(rtol)
        self.max_iter = int(max_iter)
        q = self.as_tensor(orientations)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != 4 or q.shape[0] < 1:
            raise ValueError(f"orientations must have shape (m, 4), got {tuple(q.shape)}")
        R = mandel.quaternion_to_matrix(q)  # validates unit norm
        self.orientations = q
        Q = mandel.rotation_mandel(R)  # (m,6,6)
        C0 = mandel.cubic_stiffness(params.C11, params.C12, params.C44, self.dtype, self.device)
        self.C = Q @ C0 @ Q.transpose(-1, -2)  # (m,6,6)
        self.P = schmid_tensors(self.dtype, self.device) @ Q.transpose(-1, -2)  # (m,12,6)
        self.CP = self.P @ self.C  # (m,12,6): row a = (C P_a)^T  (C symmetric)
        self.H = params.interaction_matrix(self.dtype, self.device)
        self.m = q.shape[0]
        self._partition: dict | None = None  # sticky substeps: the last successful update's (module doc)

    @classmethod
    def from_euler(cls, params: CrystalParams, euler, device="cpu", **kw) -> "SingleCrystal":
        """Construct from Bunge Euler angles (m, 3) [rad]."""
        return cls(params, euler_to_quaternion(euler), device=device, **kw)

    # -- contract ----------------------------------------------------------------------
    def initial_state(self, n: int) -> State:
        z6 = torch.zeros(n, 6, dtype=self.dtype, device=self.device)
        return {
            "strain": z6.clone(),
            "eps_p": z6.clone(),
            "xi": torch.full((n, self.n_slip), self.params.xi0, dtype=self.dtype, device=self.device),
            "gamma": torch.zeros(n, self.n_slip, dtype=self.dtype, device=self.device),
            "p": torch.zeros(n, dtype=self.dtype, device=self.device),
        }

    def _index(self, n: int) -> torch.Tensor:
        if n % self.m != 0:
            raise ValueError(f"number of points {n} is not a multiple of the {self.m} orientations")
        return torch.arange(n, device=self.device) % self.m

    def update(self, strain: torch.Tensor, dt, state: State) -> Response:
        strain = self.as_tensor(strain)
        n = strain.shape[0]
        if strain.ndim != 2 or strain.shape[1] != 6:
            raise ValueError(f"strain must have shape (n, 6), got {tuple(strain.shape)}")
        dtv = self.as_dt(dt, n)
        if torch.any(~(dtv > 0)):
            raise ValueError("dt must be > 0")
        if not bool(torch.isfinite(strain).all()):
            raise ValueError("strain contains non-finite values")
        idx = self._index(n)
        C, P, CP = self.C[idx], self.P[idx], self.CP[idx]
        eps_p_old = state["eps_p"]
        sig_old = torch.einsum("nij,nj->ni", C, state["strain"] - eps_p_old)
        dsig = torch.einsum("nij,nj->ni", C, strain - state["strain"])

        out = self._integrate(sig_old, state["xi"], dsig, dtv, C, P, CP, self._kept_partition(state, dtv))
        if not bool(out["ok"].all()):
            failed = (~out["ok"]).cpu()
            raise MaterialConvergenceError(
                f"single crystal: local Newton did not converge at {int(failed.sum())} of {n} points "
                f"(max_iter={self.max_iter} per substep, substeps down to 1/{self.max_substeps} "
                f"of the increment)", failed=failed)
        sig, xi, tangent = out["sig"], out["xi"], out["tangent"]
        deps_p, dgam_abs, dp = out["deps_p"], out["dgam_abs"], out["dp"]
        iters, substeps = out["iterations"], out["substeps"]
        self._partition = {"old_strain": state["strain"].clone(), "old_eps_p": eps_p_old.clone(),
                           "old_xi": state["xi"].clone(), "dt": dtv.clone(), **out["partition"]}
        new_state = {
            "strain": strain.clone(),
            "eps_p": eps_p_old + deps_p,
            "xi": xi,
            "gamma": state["gamma"] + dgam_abs,
            "p": state["p"] + dp,
        }
        self.info = {"iterations": iters, "substeps": substeps}
        return sig, tangent, new_state

    def forget_last_update(self) -> None:
        """Drop the kept substeps (sticky substeps, module doc)."""
        self._partition = None

    def _kept_partition(self, state: State, dt: torch.Tensor) -> dict | None:
        """The last successful update's substeps (sticky substeps, module doc), as
        :meth:`_integrate` returned them, with "kept" (n,) marking the points whose old state
        and time step are the same as then.  None when no point matches."""
        last = self._partition
        if last is None or last["dt"].shape != dt.shape:
            return None
        same = (last["dt"] == dt) & (last["old_strain"] == state["strain"]).all(-1) \
            & (last["old_eps_p"] == state["eps_p"]).all(-1) & (last["old_xi"] == state["xi"]).all(-1)
        if not bool(same.any()):
            return None
        return dict(last, kept=same)

    def _integrate(self, sig0, xi0, dsig, dt, C, P, CP, kept: dict | None = None) -> dict:
        """Integrate k points over the increment with adaptive backward-Euler substeps.

        Every point first tries the whole increment (fraction h = 1).  A substep whose
        Newton iteration fails is halved; a converged one advances the point by h and
        the next substep is doubled again (h stays a power of 1/2, so the fractions add
        up to exactly 1).  Below h = 1/max_substeps the point is reported as failed.
        ``kept`` (:meth:`_kept_partition`): substep ends that a substep must not step over
        (sticky substeps, module doc), and the solutions there, the start of the Newton
        iteration of a substep that is one of them.  The partition used is returned as
        "partition": "sig" (k, 6) and "xi" (k, 12) at the end of the increment, and for the
        m points with more than one substep (rows "row" (k,) of the others: -1) "ends"
        (m, L) (fractions, padded with 1), "sig_sub" (m, L, 6) and "xi_sub" (m, L, 12).
        With sigma_trial_j = sigma_{j-1} + h_j C deps, R_j depends on the previous
        substep through -I (sigma and xi), so the sensitivities chain exactly:
        A_j = J_j^-1 (A_{j-1} + h_j [C; 0]), A_0 = 0, tangent = A_last[:6].
        """
        k = sig0.shape[0]
        dev = self.device
        sig, xi = sig0.clone(), xi0.clone()
        A = torch.zeros(k, 18, 6, dtype=self.dtype, device=dev)
        B = torch.zeros(k, 18, 6, dtype=self.dtype, device=dev)
        B[:, :6, :] = C
        deps_p = torch.zeros_like(sig0)
        dgam_abs = torch.zeros_like(xi0)
        dp = torch.zeros(k, dtype=self.dtype, device=dev)
        iters = torch.zeros(k, dtype=torch.int64, device=dev)
        nsub = torch.zeros(k, dtype=torch.int64, device=dev)
        ok = torch.ones(k, dtype=torch.bool, device=dev)
        t = torch.zeros(k, dtype=self.dtype, device=dev)  # completed fraction of the increment
        h = torch.ones(k, dtype=self.dtype, device=dev)  # current substep fraction
        h_min = 1.0 / self.max_substeps
        ends: List[tuple] = []  # (points, their substep number, end of that substep, sigma and xi there)
        live = torch.arange(k, device=dev)
        while live.numel() > 0:
            guess = None
            if kept is not None:  # do not step over an end of the kept partition (fractions are dyadic: exact)
                tl = t[live]
                r = torch.where(kept["kept"][live], kept["row"][live], -1)
                multi = r >= 0
                b = torch.ones(live.numel(), kept["ends"].shape[1], dtype=self.dtype, device=dev)
                b[multi] = kept["ends"][r[multi]]
                nxt = torch.where(b > tl[:, None], b, torch.ones_like(b)).amin(-1)
                h[live] = torch.minimum(h[live], nxt - tl)
                # a substep of the kept partition starts from the kept solution at its end
                at = b == (tl + h[live])[:, None]
                j = torch.argmax(at.to(torch.int8), dim=1)
                start = torch.where(j > 0, b.gather(1, (j - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(tl))
                use = kept["kept"][live] & at.any(-1) & (start == tl)
                if bool(use.any()):
                    g_sig, g_xi = kept["sig"][live], kept["xi"][live]  # one substep: the end of the increment
                    g_sig[multi] = kept["sig_sub"][r[multi], j[multi]]
                    g_xi[multi] = kept["xi_sub"][r[multi], j[multi]]
                    guess = (use, g_sig, g_xi)
            hl = h[live]
            s_prev, x_prev = sig[live], xi[live]
            s_tr = s_prev + dsig[live] * hl[:, None]
            dts = dt[live] * hl
            s_new, x_new, it, conv = self._newton(s_tr, s_prev, x_prev, dts, P[live], CP[live], guess)
            iters[live] += it
            if self.substep_tol > 0:  # a substep of the kept partition was checked when it was first taken
                unchecked = conv if guess is None else conv & ~guess[0]
                conv = conv & self._accurate(s_new, x_new, s_prev, x_prev, dsig[live], dts, hl, P[live], CP[live],
                                             unchecked, iters, live)
            if bool(conv.any()):
                c = live[conv]
                hc = hl[conv]
                _, J, dg = self._residual(s_new[conv], x_new[conv], s_tr[conv], x_prev[conv], dts[conv],
                                          CP[c], P[c], jacobian=True)
                A[c] = torch.linalg.solve(J, A[c] + B[c] * hc[:, None, None])
                sig[c], xi[c] = s_new[conv], x_new[conv]
                de = torch.einsum("na,nai->ni", dg, P[c])
                deps_p[c] += de
                dgam_abs[c] += dg.abs()
                dp[c] += math.sqrt(2.0 / 3.0) * torch.linalg.norm(de, dim=-1)
                t[c] += hc
                nsub[c] += 1
                ends.append((c, nsub[c] - 1, t[c].clone(), s_new[conv], x_new[conv]))
                h[c] = torch.minimum(2.0 * hc, 1.0 - t[c])
            if not bool(conv.all()):
                f = live[~conv]
                h[f] = 0.5 * h[f]
                ok[f[h[f] < h_min]] = False
            live = live[(t[live] < 1.0) & ok[live]]
        multi = (nsub > 1).nonzero().flatten()  # the points whose substeps are kept beyond the end state
        m, L = multi.numel(), int(nsub.max()) if multi.numel() else 1
        row = torch.full((k,), -1, dtype=torch.int64, device=dev)
        row[multi] = torch.arange(m, device=dev)
        part = {"sig": sig.clone(), "xi": xi.clone(), "row": row,
                "ends": torch.ones(m, L, dtype=self.dtype, device=dev),
                "sig_sub": torch.zeros(m, L, 6, dtype=self.dtype, device=dev),
                "xi_sub": torch.zeros(m, L, self.n_slip, dtype=self.dtype, device=dev)}
        for c, j, tc, sc, xc in ends:
            r = row[c]
            sel = r >= 0
            if bool(sel.any()):
                r, j = r[sel], j[sel]
                part["ends"][r, j], part["sig_sub"][r, j], part["xi_sub"][r, j] = tc[sel], sc[sel], xc[sel]
        return dict(ok=ok, sig=sig, xi=xi, tangent=A[:, :6, :], deps_p=deps_p, dgam_abs=dgam_abs, dp=dp,
                    iterations=iters, substeps=nsub, partition=part)

    def _accurate(self, s_new, x_new, s_prev, x_prev, dsig, dts, h, P, CP, check, iters, live) -> torch.Tensor:
        """Error control (module doc): (k,) False where a substep to ``check`` (converged: (s_new,
        x_new) from (s_prev, x_prev) over the fraction h) differs from the same substep taken in two
        halves by more than ``substep_tol``, or a half does not converge; True elsewhere, and where h
        is the smallest fraction (nothing to refine).  The halves' Newton iterations are added to
        ``iters`` at ``live``."""
        ok = torch.ones_like(check)
        chk = torch.nonzero(check & (0.5 * h >= 1.0 / self.max_substeps)).flatten()
        if chk.numel() == 0:
            return ok
        sp, xp, d, t, Pc, CPc = s_prev[chk], x_prev[chk], dsig[chk] * (0.5 * h[chk])[:, None], 0.5 * dts[chk], P[chk], CP[chk]
        s1, x1, it1, ok1 = self._newton(sp + d, sp, xp, t, Pc, CPc)
        s2, x2, it2, ok2 = self._newton(s1 + d, s1, x1, t, Pc, CPc)
        iters[live[chk]] += it1 + it2
        scale = torch.maximum(s2.abs().amax(-1), torch.full_like(t, self.params.xi0))
        err = torch.maximum((s_new[chk] - s2).abs().amax(-1) / scale,
                            (x_new[chk] - x2).abs().amax(-1) / self.params.xi0)
        ok[chk] = ok1 & ok2 & torch.isfinite(err) & (err <= self.substep_tol)
        return ok

    # -- local problem -----------------------------------------------------------------
    def _slip(self, tau, xi, dt):
        """Slip increments and their derivatives w.r.t. tau and xi, all (k, 12)."""
        pr = self.params
        r = tau / xi
        ar = r.abs()
        rn1 = ar ** (pr.n - 1.0)
        base = dt[:, None] * pr.gdot0
        dgam = base * rn1 * r  # = base |r|^n sign(r)
        dg_dtau = base * pr.n * rn1 / xi
        dg_dxi = -pr.n * dgam / xi
        return dgam, dg_dtau, dg_dxi

    def _hard(self, xi):
        """phi(xi) = h0 |1 - xi/xi_inf|^a sign(.) and d phi / d xi, (k, 12)."""
        pr = self.params
        s = 1.0 - xi / pr.xi_inf
        a_s = s.abs()
        phi = pr.h0 * a_s ** pr.a * torch.sign(s)
        dphi = -pr.h0 * pr.a * a_s.clamp(min=1e-12) ** (pr.a - 1.0) / pr.xi_inf
        return phi, dphi

    def _residual(self, sig, xi, sig_trial, xi_old, dt, CP, P, jacobian: bool = False):
        tau = torch.bmm(P, sig[:, :, None])[..., 0]
        dgam, dg_dtau, dg_dxi = self._slip(tau, xi, dt)
        phi, dphi = self._hard(xi)
        habs = dgam.abs() @ self.H.T
        R = torch.cat([sig - sig_trial + torch.bmm(dgam[:, None, :], CP)[:, 0, :],
                       xi - xi_old - phi * habs], dim=-1)
        if not jacobian:
            return R, None, dgam
        k = sig.shape[0]
        J = torch.empty(k, 18, 18, dtype=sig.dtype, device=sig.device)
        # d R_sigma / d sigma = I + sum_a dg_dtau_a (C P_a)(P_a)^T ;  d R_sigma / d xi_a = dg_dxi_a C P_a
        CPt = CP.transpose(1, 2)
        J[:, :6, :6] = torch.bmm(CPt * dg_dtau[:, None, :], P)
        J[:, :6, 6:] = CPt * dg_dxi[:, None, :]
        # d R_xi / d sigma = -phi_a H_ab sgn_b dg_dtau_b P_b ;  d R_xi / d xi (diagonal added below)
        Hv = self.H[None] * torch.sign(dgam)[:, None, :]  # H_ab sgn_b
        J[:, 6:, :6] = torch.bmm(Hv * (-phi[:, :, None] * dg_dtau[:, None, :]), P)
        J[:, 6:, 6:] = Hv * (-phi[:, :, None] * dg_dxi[:, None, :])
        diag = J.diagonal(dim1=1, dim2=2)
        diag[:, :6] += 1.0
        diag[:, 6:] += 1.0 - dphi * habs
        return R, J, dgam

    def _initial_guess(self, dt, sig_trial, sig_old, xi_old, P):
        """Elastic predictor pulled back towards the previous stress (see module doc)."""
        pr = self.params
        # |d sigma_trial| / C44 ~ 2 |d eps_dev|; in multi-slip each system takes roughly
        # |d eps_dev| / (k m) ~ a quarter of it (k m ~ 3 for FCC): the resolved-stress ratio
        # needed for that slip caps the predictor (measured: ~30 % fewer iterations than 2x)
        dstrain = torch.linalg.norm(sig_trial - sig_old, dim=-1) / pr.C44
        r_cap = (0.25 * dstrain / (pr.gdot0 * dt)).clamp(min=1.0) ** (1.0 / pr.n)
        lam = torch.tensor([1.0, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.0], dtype=self.dtype, device=self.device)
        cand = sig_old[:, None, :] + lam[None, :, None] * (sig_trial - sig_old)[:, None, :]  # (k,L,6)
        ratio = (torch.einsum("nai,nli->nla", P, cand).abs() / xi_old[:, None, :]).amax(-1)  # (k,L)
        okc = ratio <= r_cap[:, None]
        okc[:, -1] = True
        first = torch.argmax(okc.to(torch.int8), dim=1)  # largest admissible lambda
        return cand[torch.arange(cand.shape[0], device=self.device), first]

    def _newton(self, sig_trial, sig_old, xi_old, dt, P, CP, guess=None):
        """Backward-Euler local problem for k points: (sigma, xi, iterations, converged).

        ``guess``: (mask (k,), sigma (k, 6), xi (k, 12)): where the mask is set, the iteration
        starts there instead of at the predictor (sticky substeps, module doc), and takes at
        least one step: a guess within the tolerance would otherwise be returned as it is, and
        the stress would not follow changes of the strain below the tolerance.

        Newton with a backtracking (Armijo) line search on f = |R|^2 / 2; the residual
        and Jacobian of a full step are evaluated together and reused by the next
        iteration.  A point whose line search fails (no decrease in 30 halvings) is
        reported as not converged at once (the caller then substeps).
        """
        n = sig_trial.shape[0]
        tol = self.rtol * self.params.xi0 + 1e-14 * sig_trial.abs().amax(-1)  # + round-off floor
        sig = self._initial_guess(dt, sig_trial, sig_old, xi_old, P)
        xi = xi_old.clone()
        warm = torch.zeros(n, dtype=torch.bool, device=self.device)
        if guess is not None:
            warm, g_sig, g_xi = guess
            sig = torch.where(warm[:, None], g_sig, sig)
            xi = torch.where(warm[:, None], g_xi, xi)
        iters = torch.zeros(n, dtype=torch.int64, device=self.device)
        ok = torch.zeros(n, dtype=torch.bool, device=self.device)
        act = torch.arange(n, device=self.device)
        R, J, _ = self._residual(sig, xi, sig_trial, xi_old, dt, CP, P, jacobian=True)
        for it in range(self.max_iter + 1):
            rmax = R.abs().amax(-1)
            conv = torch.isfinite(rmax) & (rmax <= tol[act])
            if it == 0:
                conv &= ~warm
            ok[act[conv]] = True
            keep = ~conv & torch.isfinite(rmax)  # non-finite residuals cannot recover
            if it == self.max_iter or not bool(keep.any()):
                break
            if not bool(keep.all()):
                act, R, J = act[keep], R[keep], J[keep]
            iters[act] += 1
            s_a, x_a = sig[act], xi[act]
            st_a, xo_a, dt_a, CP_a, P_a = sig_trial[act], xi_old[act], dt[act], CP[act], P[act]
            dx, info = torch.linalg.solve_ex(J, -R)
            good_dx = (info == 0) & torch.isfinite(dx).all(-1)
            dx = torch.where(good_dx[:, None], dx, torch.zeros_like(dx))
            f0 = 0.5 * (R * R).sum(-1)
            # full step, with Jacobian
            s_t, x_t = s_a + dx[:, :6], x_a + dx[:, 6:]
            Rt, Jt, _ = self._residual(s_t, x_t, st_a, xo_a, dt_a, CP_a, P_a, jacobian=True)
            ft = 0.5 * (Rt * Rt).sum(-1)
            good = good_dx & torch.isfinite(ft) & (x_t > 0).all(-1) & (ft <= (1.0 - 1e-4) * f0)
            if it == 0 and bool(warm.any()):  # a warm start already within the tolerance: its step need not descend
                good |= warm[act] & good_dx & (x_t > 0).all(-1) & (Rt.abs().amax(-1) <= tol[act])
            bad = ~good
            if bool(bad.any()):  # keep the old residual/Jacobian only where the full step is rejected
                Rt[bad], Jt[bad] = R[bad], J[bad]
            R, J = Rt, Jt
            sig[act[good]], xi[act[good]] = s_t[good], x_t[good]
            # backtracking for the others
            bt = (~good & good_dx).nonzero().flatten()
            step = torch.ones(bt.numel(), dtype=self.dtype, device=self.device)
            done = torch.zeros(bt.numel(), dtype=torch.bool, device=self.device)
            for _ in range(30):
                if bt.numel() == 0 or bool(done.all()):
                    break
                step = torch.where(done, step, 0.5 * step)
                w = (~done).nonzero().flatten()
                j = bt[w]
                s_t = s_a[j] + step[w, None] * dx[j, :6]
                x_t = x_a[j] + step[w, None] * dx[j, 6:]
                Rt, _, _ = self._residual(s_t, x_t, st_a[j], xo_a[j], dt_a[j], CP_a[j], P_a[j])
                ft = 0.5 * (Rt * Rt).sum(-1)
                g = torch.isfinite(ft) & (x_t > 0).all(-1) & (ft <= (1.0 - 1e-4 * step[w]) * f0[j])
                sig[act[j[g]]], xi[act[j[g]]] = s_t[g], x_t[g]
                done[w[g]] = True
            moved = bt[done]
            if moved.numel():
                i = act[moved]
                Rm, Jm, _ = self._residual(sig[i], xi[i], st_a[moved], xo_a[moved], dt_a[moved], CP_a[moved],
                                           P_a[moved], jacobian=True)
                R[moved], J[moved] = Rm, Jm
            # no descent possible (singular system or failed line search): give up on these points
            stuck = ~good & ~torch.zeros_like(good).index_fill_(0, moved, True)
            if bool(stuck.any()):
                R = torch.where(stuck[:, None], torch.full_like(R, float("inf")), R)
        return sig, xi, iters, ok


def uniaxial_stress_path(material: Material, strain_rate: float, total_strain: float, n_steps: int,
                         n_points: int = 1, axis: int = 0, tol: float = 1e-9, max_iter: int = 25):
    """Uniaxial-stress test at constant axial strain rate (mixed control), batched over points.

    The axial strain component ``axis`` (0, 1 or 2 = sample x, y, z) follows
    ``strain_rate * t``; the other five strain components are iterated with the
    tangent until the corresponding stresses vanish (|sigma_lat| <= tol * |sigma|
    + 1 Pa).  Returns (axial strain (n_steps+1,), stress (n_steps+1, n_points, 6),
    final state).
    """
    dt = abs(total_strain / strain_rate) / n_steps
    free = [i for i in range(6) if i != axis]
    state = material.initial_state(n_points)
    strain = torch.zeros(n_points, 6, dtype=material.dtype, device=material.device)
    eps_ax = [0.0]
    stresses = [torch.zeros(n_points, 6, dtype=material.dtype, device=material.device)]
    for k in range(1, n_steps + 1):
        e = total_strain * k / n_steps
        trial = strain.clone()
        # extrapolate the lateral strains with the last increment
        trial[:, axis] = e
        for _ in range(max_iter):
            stress, tangent, new_state = material.update(trial, dt, state)
            res = stress[:, free]
            if bool((res.abs().amax(-1) <= tol * stress.abs().amax(-1) + 1.0).all()):
                break
            Kff = tangent[:, free][:, :, free]
            trial[:, free] = trial[:, free] - torch.linalg.solve(Kff, res)
        else:
            raise MaterialConvergenceError("uniaxial_stress_path: lateral stresses did not vanish")
        strain, state = trial, new_state
        eps_ax.append(e)
        stresses.append(stress)
    return torch.tensor(eps_ax, dtype=material.dtype), torch.stack(stresses), state
