"""Recurrent neural operator (RNO) for history-dependent small-strain constitutive laws.

After Liu, Ocegueda, Trautner, Stuart & Bhattacharya, J. Mech. Phys. Solids (2023),
"Learning macroscopic internal variables and history dependence from microscopic models".
With k internal variables xi (dimensionless), explicit-Euler time stepping:

    xi_n    = xi_{n-1} + (dt_n / t_s) * G(eps_n / e_s, xi_{n-1}),        xi_0 = 0
    sigma_n = s_s * F(eps_n / e_s, asinh((eps_n - eps_{n-1}) / (dt_n r_s)), xi_n)

(with ``RNOArch.g_trial`` G also sees the trial stress F(eps_n / e_s, asinh q_n, xi_{n-1}), the elastic
predictor of return mapping; with ``g_increment`` G is affine in the rate, see :class:`RNOArch`).
F and G are MLPs with a smooth activation; F also has a linear skip (F = MLP + L x,
L initialised by least squares on the training data) that carries the elastic-like part.  **F uses the updated xi_n** (as in the
paper), so xi_n depends on eps_n and the consistent tangent contains the path
d sigma/d xi_n . d xi_n/d eps_n besides the direct strain term and the rate term
(1/dt_n) d sigma/d rate; :meth:`RNO.step_with_tangent` differentiates the whole step.

Normalization (stored with the model, SI units): strain scale e_s [-], strain-rate
scale r_s [1/s], stress scale s_s [Pa] and time scale t_s = e_s / r_s [s] -- the time
the strain takes to change by e_s at the typical rate, so that G's rate is O(1) when
the internal variables change by O(1) over such a strain change.  The rate enters F
through a componentwise asinh (smooth and odd, linear near 0, logarithmic for large
rates) because training rates span several decades (rate-sensitive plasticity
depends on log-rate); it is a fixed part of F.

An odd model (``RNOArch.odd``) returns (sigma(eps) - sigma(-eps)) / 2 of the above, each side with
its own internal variables, so that the negated path gives exactly the negated stress.

Shapes: strain (..., 6) Mandel, dt (...) [s], xi (..., n_state) (n_state = k, or 2k for an odd
model).  Everything is batched;
:meth:`RNO.rollout` loops over time steps only.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import List, Tuple

import torch
from torch import nn

#: smooth activations (the tangent must be smooth)
ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


@dataclass
class RNOArch:
    """Architecture of an RNO: ``k`` internal variables, MLP widths and activation."""

    k: int = 2
    f_hidden: List[int] = field(default_factory=lambda: [128, 128])
    g_hidden: List[int] = field(default_factory=lambda: [64, 64])
    activation: str = "silu"
    strain_dim: int = 6
    #: False: G(eps_n, xi_{n-1}) as in the paper; True: G(eps_n, rate_n / r_s, xi_{n-1}) (the
    #: rate enters G linearly, so increments of xi can follow strain increments -- needed
    #: for (nearly) rate-independent plasticity with large steps)
    g_rate: bool = False
    #: > 0: F and G see xi through the soft bound B tanh(xi/B) (robustness: unseen paths
    #: cannot drive the MLPs far outside their training inputs); 0: off
    xi_bound: float = 0.0
    #: True: the first 6 internal variables act as a (normalized) plastic-strain-like variable
    #: with an unbounded elastic term, sigma/s_s = C_el (eps/e_s - xi[:6]) + F(...); C_el (6x6)
    #: is learned (initialised from the first increments).  Needs k >= 6.  False: off
    elastic_split: bool = False
    #: True: G is affine in the strain rate, G = A(eps_n, asinh q, xi) + B(eps_n, asinh q, xi) q with
    #: q = (eps_n - eps_{n-1})/(dt_n r_s) and B a (k x 6) matrix; then xi_n - xi_{n-1} =
    #: (dt_n/t_s) A + B (eps_n - eps_{n-1})/e_s, so rate-independent flow (A = 0) gives increments
    #: that follow strain increments exactly, at any step size.  Replaces g_rate.  False: off
    g_increment: bool = False
    #: True: the model is odd in the strain path, sigma(-eps(.)) = -sigma(eps(.)) exactly: it runs the
    #: path and its negative side by side, each with its own k internal variables (state 2k), and
    #: returns half the difference of their stresses (twice the cost).  Right for materials without a
    #: preferred sign of loading, like crystal plasticity with symmetric slip or J2; the Taylor RVE is
    #: odd to the last bit.  False: off
    odd: bool = False
    #: residual blocks after F's (G's) last hidden layer, h <- h + W_b act(W_a h + b_a), both of that
    #: layer's width: depth at a fixed width.  Their output weights may start at zero, so that a model
    #: can be deepened without changing what it computes (:func:`grow`).  0: a plain MLP
    f_blocks: int = 0
    g_blocks: int = 0
    #: True: G also sees the trial stress F(eps, asinh q, xi_{n-1}) / s_s -- the stress the step would
    #: give if the internal variables did not move (an elastic predictor) -- as the flow rule of
    #: plasticity is driven by stress, not strain.  Costs one more evaluation of F per (sub-)step;
    #: :func:`grow` turns it on with zero weights on the new inputs (the same function at the start).
    #: False: off
    g_trial: bool = False

    def validate(self) -> None:
        if self.k < 0:
            raise ValueError(f"k (number of internal variables) must be >= 0, got {self.k}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not self.xi_bound >= 0:
            raise ValueError(f"xi_bound must be >= 0, got {self.xi_bound}")
        if self.elastic_split and self.k < 6:
            raise ValueError(f"elastic_split needs k >= 6 internal variables, got k = {self.k}")
        if self.g_increment and self.g_rate:
            raise ValueError("g_increment already feeds the strain rate to G: set g_rate = false")
        if self.g_trial and (self.k == 0 or self.elastic_split):
            raise ValueError("g_trial needs k > 0 internal variables and no elastic_split")
        if self.strain_dim != 6:
            raise ValueError(f"strain dimension must be 6 (Mandel), got {self.strain_dim}")
        if any(w <= 0 for w in list(self.f_hidden) + list(self.g_hidden)):
            raise ValueError("hidden layer widths must be > 0")
        for name in ("f_blocks", "g_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} (residual blocks) must be >= 0, got {getattr(self, name)}")
            if getattr(self, name) and not getattr(self, name[0] + "_hidden"):
                raise ValueError(f"{name} needs a hidden layer ({name[0]}_hidden) for its blocks to act on")

    def f_sizes(self) -> List[int]:
        """Layer sizes of F: [2*6 + k, hidden..., 6]."""
        return [2 * self.strain_dim + self.k, *self.f_hidden, self.strain_dim]

    def g_sizes(self) -> List[int]:
        """Layer sizes of G: [6 (+6 with g_rate or g_increment) + k (+6 with g_trial), hidden..., k (x7 with
        g_increment)] (empty when k == 0)."""
        n_in = self.strain_dim * (2 if (self.g_rate or self.g_increment) else 1) + self.k \
            + (self.strain_dim if self.g_trial else 0)
        n_out = self.k * (1 + self.strain_dim) if self.g_increment else self.k
        return [n_in, *self.g_hidden, n_out] if self.k > 0 else []

    def to_dict(self) -> dict:
        d = asdict(self)
        d["f_layers"], d["g_layers"] = self.f_sizes(), self.g_sizes()
        return d


class Residual(nn.Module):
    """A residual block of width w: h (..., w) -> h + W_b act(W_a h + b_a) (+ b_b)."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, width), ACTIVATIONS[activation](), nn.Linear(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.inner(h)


def _mlp(sizes: List[int], activation: str, blocks: int = 0) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them, and ``blocks`` residual blocks
    (:class:`Residual`) after the last hidden layer's activation."""
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i == len(sizes) - 2:
            layers += [Residual(sizes[i], activation) for _ in range(blocks)]
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _activation_derivative(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative of a smooth activation at z."""
    if isinstance(act, nn.SiLU):
        sg = torch.sigmoid(z)
        return sg * (1.0 + z * (1.0 - sg))
    if isinstance(act, nn.Tanh):
        return 1.0 - torch.tanh(z) ** 2
    if isinstance(act, nn.GELU):
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    if isinstance(act, nn.Softplus):
        return torch.sigmoid(z)
    raise TypeError(f"no derivative for activation {type(act).__name__}")


def _mlp_jvp(mlp: nn.Sequential, x: torch.Tensor, dx: torch.Tensor, inplace: bool = True):
    """Values (n, out) and directional derivatives (m, n, out) of an MLP.

    x (n, in), dx (m, n, in): m tangent directions, leading, so that each linear layer is one
    plain matrix product over m*n rows and each activation derivative one contiguous, in-place
    broadcast product (in a point-major (n, m, .) layout that product is 5-10x slower on CPUs).
    ``inplace=False`` for a derivative that autograd differentiates (training).
    """
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            x = layer(x)
            dx = dx @ layer.weight.T
        elif isinstance(layer, Residual):  # the block's first product makes new tensors: no aliasing
            y, dy = _mlp_jvp(layer.inner, x, dx, inplace)
            x, dx = x + y, dx + dy
        else:
            a = _activation_derivative(layer, x)
            dx = dx.mul_(a) if inplace else dx * a
            x = layer(x)
    return x, dx


class RNO(nn.Module):
    """The recurrent neural operator (see module docstring)."""

    #: cap on the sub-steps of one increment (an increment of > MAX_SUBSTEPS * max_substep_strain
    #: is far outside the training data anyway; the cap bounds the cost of such points)
    MAX_SUBSTEPS = 32
    #: width (in units of N = |d eps| / h_max) of the blend from m-1 to m sub-steps after N = m-1
    #: (see _blend): narrow, so that the (m-1)-sub-step solution is used only just above its limit
    BLEND = 0.25

    def __init__(self, arch: RNOArch, strain_scale: float = 1e-2, rate_scale: float = 1e-3,
                 stress_scale: float = 1e8):
        super().__init__()
        arch.validate()
        for name, v in (("strain_scale", strain_scale), ("rate_scale", rate_scale), ("stress_scale", stress_scale)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        self.arch = arch
        self.k = arch.k
        #: width of the state xi: k, or 2k for an odd model (the path's and its negative's)
        self.n_state = arch.k * (2 if arch.odd else 1)
        self.F = _mlp(arch.f_sizes(), arch.activation, arch.f_blocks)
        #: linear skip of F (no bias): F(x) = MLP(x) + L x -- carries the elastic-like part
        self.F_linear = nn.Linear(arch.f_sizes()[0], arch.strain_dim, bias=False)
        nn.init.zeros_(self.F_linear.weight)
        self.G = _mlp(arch.g_sizes(), arch.activation, arch.g_blocks) if arch.k > 0 else None
        #: elastic stiffness of the elastic split (normalized units), sigma += C_el (e - xi[:6])
        self.C_el = nn.Parameter(torch.zeros(arch.strain_dim, arch.strain_dim)) if arch.elastic_split else None
        self.register_buffer("scales", torch.tensor([strain_scale, rate_scale, stress_scale], dtype=torch.float64))
        #: integration setting (not a weight): largest strain increment (Mandel norm) per explicit-Euler
        #: sub-step of xi; larger increments are split into equal sub-steps (see :meth:`substeps`,
        #: :meth:`_blend`).  0 = never split.
        self.max_substep_strain = 0.0

    # -- normalization ------------------------------------------------------------------
    @property
    def strain_scale(self) -> float:
        return float(self.scales[0])

    @property
    def rate_scale(self) -> float:
        return float(self.scales[1])

    @property
    def stress_scale(self) -> float:
        return float(self.scales[2])

    @property
    def time_scale(self) -> float:
        """t_s = e_s / r_s [s]."""
        return self.strain_scale / self.rate_scale

    def normalization(self) -> dict:
        return {"strain_scale": self.strain_scale, "rate_scale": self.rate_scale,
                "stress_scale": self.stress_scale, "time_scale": self.time_scale}

    def _bound(self, xi: torch.Tensor) -> torch.Tensor:
        """Internal variables as the MLPs see them: B tanh(xi/B) (identity when B = 0)."""
        B = self.arch.xi_bound
        return B * torch.tanh(xi / B) if B > 0 else xi

    # -- one time step -------------------------------------------------------------------
    def substeps(self, strain: torch.Tensor, prev_strain: torch.Tensor) -> torch.Tensor:
        """Sub-steps per point (...,): ceil(|eps_n - eps_{n-1}| / h_max) in [1, MAX_SUBSTEPS], with
        h_max = :attr:`max_substep_strain` (all ones when it is 0).  See :meth:`_blend`."""
        if self.max_substep_strain <= 0 or self.G is None:
            return torch.ones(strain.shape[:-1], dtype=torch.long, device=strain.device)
        return self._blend(torch.linalg.vector_norm(strain - prev_strain, dim=-1))[1]

    def _blend(self, inc: torch.Tensor):
        """C1 sub-stepping of an increment of strain length ``inc`` (n,).

        With N = inc / h_max and m = ceil(N) (in [1, MAX_SUBSTEPS]), xi_n is the blend
        xi = xi[m-1] + s (xi[m] - xi[m-1]) of explicit Euler in m-1 and in m equal sub-steps,
        s = 3 t^2 - 2 t^3 with t = min((N - (m-1)) / BLEND, 1) (s = 1 for N <= 1 and beyond
        MAX_SUBSTEPS).  At an integer N both sides give xi[m] with the same derivative, so xi_n
        is continuously differentiable in eps_n and Newton sees no kinks (sub-steps of h_max
        plus a remainder give a C0 scheme whose tangent jumps by up to ~50 % there).  The
        (m-1)-sub-step solution, with sub-steps up to (1 + BLEND/(m-1)) h_max, enters only
        within BLEND after N = m-1.
        Returns the counts (m-1 clamped to >= 1, m) (n,) long, s (n,) and ds/d inc (n,).
        """
        N = inc / self.max_substep_strain
        hi = torch.clamp(torch.ceil(N), min=1, max=self.MAX_SUBSTEPS)
        t = torch.where(hi > 1, torch.clamp((N - (hi - 1)) / self.BLEND, 0.0, 1.0), torch.ones_like(N))
        s = t * t * (3.0 - 2.0 * t)
        ds = torch.where((t > 0) & (t < 1), 6.0 * t * (1.0 - t) / (self.BLEND * self.max_substep_strain), 0.0)
        return torch.clamp(hi - 1, min=1).long(), hi.long(), s, ds

    @staticmethod
    def _by_substeps(counts: torch.Tensor):
        """(order, moving) for sub-step counts (n,) >= 1: ``moving[j]`` = number of points with at
        least j sub-steps (``moving[1]`` = n), and ``order`` a permutation by decreasing count (None
        when no point has more than one), so that the points still moving at sub-step j are the
        first ``moving[j]`` of the reordered batch."""
        moving = torch.bincount(counts).flip(0).cumsum(0).flip(0).tolist() if counts.numel() else [0]
        return (torch.argsort(counts, descending=True) if len(moving) > 2 else None), moving

    def _euler(self, e0, de_, q, r, xi_prev, cs, counts):
        """xi after ``counts`` (n,) equal explicit-Euler sub-steps from normalized strain e0 (n,6)
        along de_ (n,6); cs (n,) = dt / t_s.  Sub-step j only evaluates G at the points with
        at least j sub-steps (the others have arrived), so a few far-moving points do not
        multiply the cost of the whole batch.  Kept apart from :meth:`_euler_jvp` on purpose: this
        masked update is what training differentiates (the in-place index assignments there leak
        memory under autograd, about 20 MB per batch), and the shipped surrogates were trained with
        exactly this order of operations (a batch reordered by sub-step count, as in
        :meth:`_euler_jvp`, changes training in the last bits from about epoch 9 on, so retraining
        would no longer reproduce the shipped weights bit for bit).  ``step(..., ordered=True)`` (the
        macro solver) takes :meth:`_euler_jvp` without derivatives instead."""
        xi = xi_prev
        c = counts.to(e0.dtype)
        for j in range(1, int(counts.max()) + 1 if counts.numel() else 1):
            act = counts >= j
            w = j / c[act]
            g = self._g(e0[act] + w[:, None] * de_[act], q[act], r[act], self._bound(xi[act]))
            upd = torch.zeros_like(xi)
            upd[act] = (cs[act] / c[act])[:, None] * g
            xi = xi + upd
        return xi

    def _euler_jvp(self, e0, de, de_, q, dq, r, dr, xi_prev, cs, counts):
        """:meth:`_euler` with the derivatives d xi/d eps_n (6 dirs, n, k) alongside (the
        fractions j/m do not depend on eps_n).  Derivatives de, dq, dr: (6, n, .); all three None:
        values only (dxi None).  The points are taken in order of decreasing sub-step count, so that
        those still moving at sub-step j are a prefix of the batch (views: no gathers, scatters or
        device synchronisations per sub-step)."""
        n, k = e0.shape[0], xi_prev.shape[-1]
        jac = de is not None
        order, moving = self._by_substeps(counts)
        if order is not None:
            e0, de_, q, r, cs, counts, xi_prev = (t[order] for t in (e0, de_, q, r, cs, counts, xi_prev))
            if jac:
                de, dq, dr = (t[:, order] for t in (de, dq, dr))
        xi, dxi = xi_prev.clone(), (e0.new_zeros(6, n, k) if jac else None)
        c = counts.to(e0.dtype)
        for j in range(1, len(moving)):
            m = moving[j]
            w = j / c[:m]
            e_j = e0[:m] + w[:, None] * de_[:m]
            if jac:
                xb, dxb = self._bound_jvp(xi[:m], dxi[:, :m])
                g, dg = self._g_jvp(e_j, w[:, None] * de[:, :m], q[:m], dq[:, :m], r[:m], dr[:, :m], xb, dxb)
            else:
                g = self._g(e_j, q[:m], r[:m], self._bound(xi[:m]))
            ca = cs[:m] / c[:m]
            xi[:m] += ca[:, None] * g
            if jac:
                dxi[:, :m] += ca[:, None] * dg
        if order is not None:  # back to the caller's order (argsort of a permutation inverts it)
            back = torch.argsort(order)
            xi, dxi = xi[back], (dxi[:, back] if jac else None)
        return xi, dxi

    def _euler_blended(self, e0, de, de_, q, dq, r, dr, xi_prev, cs, lo, hi, w, b):
        """:meth:`_euler_jvp` with ``hi`` sub-steps at all n points and, in the same pass (rows n..),
        ``lo`` sub-steps at the points ``b`` inside a blend, where xi = xi_lo + w (xi_hi - xi_lo)
        (see :meth:`_blend`; derivatives at fixed w).  Returns xi (n, k), dxi (6, n, k) or None,
        and xi_hi - xi_lo at the points b (for the derivative of w itself)."""
        n = e0.shape[0]
        ab = torch.cat([torch.arange(n, device=b.device), b])
        jac = de is not None
        xi, dxi = self._euler_jvp(e0[ab], de[:, ab] if jac else None, de_[ab], q[ab], dq[:, ab] if jac else None,
                                  r[ab], dr[:, ab] if jac else None, xi_prev[ab], cs[ab], torch.cat([hi, lo[b]]))
        xl, xi = xi[n:], xi[:n]
        diff = xi[b] - xl
        xi[b] = xl + w[b][:, None] * diff
        if jac:
            dxl, dxi = dxi[:, n:], dxi[:, :n]
            dxi[:, b] = dxl + w[b][:, None] * (dxi[:, b] - dxl)
        return xi, dxi, diff

    def _g_parts(self, e, q, r, xb) -> list:
        """G's inputs before the trial stress: [e, asinh q, xb] (increment form), [e, q, xb] (g_rate)
        or [e, xb]."""
        return [e, r, xb] if self.arch.g_increment else ([e, q, xb] if self.arch.g_rate else [e, xb])

    def _g(self, e, q, r, xb):
        """G's value (..., k) at normalized strain e, rate q (asinh r), bounded xi xb."""
        x = self._g_parts(e, q, r, xb)
        if self.arch.g_trial:  # the trial stress: F at this strain and rate with the old state
            x.append(self._f(torch.cat([e, r, xb], dim=-1)))
        out = self.G(torch.cat(x, dim=-1))
        if self.arch.g_increment:
            k = self.k
            return out[..., :k] + (out[..., k:].unflatten(-1, (k, 6)) @ q[..., None])[..., 0]
        return out

    def _g_jvp(self, e, de, q, dq, r, dr, xb, dxb):
        """G's value (n, k) and directional derivatives (m, n, k) given input tangents (m, n, .)."""
        x, dx = self._g_parts(e, q, r, xb), self._g_parts(de, dq, dr, dxb)
        if self.arch.g_trial:
            trial, dtrial = self._f_jvp(torch.cat([e, r, xb], -1), torch.cat([de, dr, dxb], 2))
            x, dx = x + [trial], dx + [dtrial]
        out, dout = _mlp_jvp(self.G, torch.cat(x, -1), torch.cat(dx, 2))
        if not self.arch.g_increment:
            return out, dout
        k = self.k
        Bm, dBm = out[:, k:].unflatten(-1, (k, 6)), dout[..., k:].unflatten(-1, (k, 6))
        g = out[:, :k] + (Bm @ q[..., None])[..., 0]
        dg = dout[..., :k] + (dBm @ q[..., None])[..., 0] + torch.einsum("nkj,dnj->dnk", Bm, dq)
        return g, dg

    def _bound_jvp(self, xi, dxi):
        B = self.arch.xi_bound
        if B <= 0:
            return xi, dxi
        th = torch.tanh(xi / B)
        return B * th, (1.0 - th * th) * dxi

    def step(self, strain: torch.Tensor, prev_strain: torch.Tensor, dt: torch.Tensor,
             xi_prev: torch.Tensor, ordered: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """One increment: (stress (...,6) [Pa], xi_n (...,n_state)) from eps_n, eps_{n-1}, dt_n,
        xi_{n-1} (see :meth:`_step`; an odd model takes half the difference of the steps of +eps and
        -eps, each with its half of the state)."""
        if not self.arch.odd:
            return self._step(strain, prev_strain, dt, xi_prev, ordered)
        n = strain.shape[0]
        sig, xi = self._step(*self._two_sides(strain, prev_strain, dt, xi_prev), ordered)
        return 0.5 * (sig[:n] - sig[n:]), torch.cat([xi[:n], xi[n:]], dim=-1)

    def _two_sides(self, strain, prev_strain, dt, xi):
        """An odd model's inputs (strain, prev_strain, dt, xi of one side) for the path (first n
        rows) and its negative (last n rows), each side with its half of the state xi (..., 2k)."""
        k, dt = self.k, dt.expand(strain.shape[:-1])
        return (torch.cat([strain, -strain]), torch.cat([prev_strain, -prev_strain]), torch.cat([dt, dt]),
                torch.cat([xi[..., :k], xi[..., k:]]))

    def _step(self, strain: torch.Tensor, prev_strain: torch.Tensor, dt: torch.Tensor,
              xi_prev: torch.Tensor, ordered: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """One increment: (stress (...,6) [Pa], xi_n (...,k)) from eps_n, eps_{n-1}, dt_n, xi_{n-1}.

        With :attr:`max_substep_strain` = h > 0, a point whose strain increment exceeds h integrates
        xi in equal sub-steps of at most (1 + BLEND) h, blended between two counts so that xi_n is C1 in
        eps_n (:meth:`_blend`; linear strain in time, same rate); other points are unchanged.
        ``ordered``: False integrates the sub-steps as training does (:meth:`_euler`); True in one pass
        over the batch ordered by sub-step count, both counts of a blend included (as
        :meth:`step_with_tangent`): the same values up to rounding, with no device synchronisation
        per sub-step (the macro solver's stress pass; on a GPU about 15 % cheaper).
        """
        s = self.scales.to(strain.dtype)
        e = strain / s[0]
        dtn = dt[..., None]
        q = (strain - prev_strain) / (dtn * s[1])
        r = torch.asinh(q)
        if self.G is not None:
            blend = None  # sub-step counts and weights of the points flattened to (n,)
            if self.max_substep_strain > 0 and e.numel():
                blend = self._blend(torch.linalg.vector_norm(strain - prev_strain, dim=-1).reshape(-1))
            if blend is None or int(blend[1].max()) == 1:
                xi = xi_prev + (dtn * (s[1] / s[0])) * self._g(e, q, r, self._bound(xi_prev))
            else:  # C1 sub-stepping (see _blend), on the points flattened to (n, .)
                lead, k = strain.shape[:-1], xi_prev.shape[-1]
                flat = [t.reshape(-1, t.shape[-1]) for t in (strain, prev_strain, q, r, xi_prev)]
                eps_f, prev_f, q_f, r_f, xi0_f = flat
                cs = (dt.reshape(-1) * (s[1] / s[0])).expand(eps_f.shape[0])
                e0, de_ = prev_f / s[0], (eps_f - prev_f) / s[0]
                lo, hi, w, _ = blend
                if not ordered:  # the masked update of training (_euler)
                    xi = self._euler(e0, de_, q_f, r_f, xi0_f, cs, hi)
                    b = w < 1  # points between two counts: also the (m-1)-sub-step solution
                    if bool(b.any()):
                        xi_lo = self._euler(e0[b], de_[b], q_f[b], r_f[b], xi0_f[b], cs[b], lo[b])
                        upd = torch.zeros_like(xi)
                        upd[b] = (1.0 - w[b])[:, None] * (xi_lo - xi[b])
                        xi = xi + upd
                else:  # both counts in one pass ordered by count (as step_with_tangent)
                    b = torch.nonzero(w < 1).squeeze(1)
                    xi = self._euler_blended(e0, None, de_, q_f, None, r_f, None, xi0_f, cs, lo, hi, w, b)[0]
                xi = xi.reshape(*lead, k)
        else:
            xi = xi_prev
        f = self._f(torch.cat([e, r, self._bound(xi)], dim=-1))
        if self.C_el is not None:
            f = f + (e - xi[..., :6]) @ self.C_el.T
        return f * s[2], xi

    def step_with_tangent(self, strain: torch.Tensor, prev_strain: torch.Tensor, dt: torch.Tensor,
                          xi_prev: torch.Tensor, chunk: int = 16384):
        """Stress (n,6), consistent tangent d sigma_n/d eps_n (n,6,6) [Pa] and xi_n (n,n_state) (see
        :meth:`_step_with_tangent`; for an odd model the tangent is the mean of the two sides', since
        d(-sigma(-eps))/d eps = sigma'(-eps))."""
        if not self.arch.odd:
            return self._step_with_tangent(strain, prev_strain, dt, xi_prev, chunk)
        n = strain.shape[0]
        sig, C, xi = self._step_with_tangent(*self._two_sides(strain, prev_strain, dt, xi_prev), chunk)
        return 0.5 * (sig[:n] - sig[n:]), 0.5 * (C[:n] + C[n:]), torch.cat([xi[:n], xi[n:]], dim=-1)

    def _step_with_tangent(self, strain: torch.Tensor, prev_strain: torch.Tensor, dt: torch.Tensor,
                           xi_prev: torch.Tensor, chunk: int = 16384):
        """Stress (n,6), consistent tangent d sigma_n/d eps_n (n,6,6) [Pa] and xi_n (n,k).

        Exact forward-mode differentiation of :meth:`step` (sub-steps included): the Jacobian
        w.r.t. the 6 strain components is propagated through both MLPs alongside the values (in
        chunks of ``chunk`` points to bound memory).  It includes the direct strain term, the
        rate term (1/dt) dF/d(rate) and the path dF/d(xi_n) . d(xi_n)/d(eps_n).
        """
        n = strain.shape[0]
        if n > chunk:
            outs = [self._step_with_tangent(strain[i:i + chunk], prev_strain[i:i + chunk], dt[i:i + chunk],
                                            xi_prev[i:i + chunk], chunk) for i in range(0, n, chunk)]
            return tuple(torch.cat([o[j] for o in outs]) for j in range(3))
        s = self.scales.to(strain.dtype)
        eye = torch.eye(6, dtype=strain.dtype, device=strain.device)[:, None, :]  # (6 dirs, 1, 6)
        e = strain / s[0]
        # derivative layout (6 directions, n, features)
        de = (eye / s[0]).expand(6, n, 6)
        dtn = dt[..., None]
        q = (strain - prev_strain) / (dtn * s[1])
        r = torch.asinh(q)
        dq = eye / (dtn * s[1])
        dr = eye * (torch.rsqrt(1.0 + q * q) / (dtn * s[1]))
        if self.G is not None:
            e0, de_ = prev_strain / s[0], (strain - prev_strain) / s[0]
            cs = dt * (s[1] / s[0])
            blend = self.max_substep_strain > 0 and n > 0
            if blend:  # C1 sub-stepping (see _blend)
                inc = torch.linalg.vector_norm(strain - prev_strain, dim=-1)
                lo, hi, w, dw = self._blend(inc)
            else:
                hi = torch.ones(n, dtype=torch.long, device=strain.device)
            b = torch.nonzero(w < 1).squeeze(1) if blend else None
            if b is None or not b.numel():
                xi, dxi = self._euler_jvp(e0, de, de_, q, dq, r, dr, xi_prev, cs, hi)
            else:  # points between two counts: also m-1 sub-steps, in the same pass
                xi, dxi, diff = self._euler_blended(e0, de, de_, q, dq, r, dr, xi_prev, cs, lo, hi, w, b)
                u = (strain[b] - prev_strain[b]) / inc[b, None]  # d|d eps|/d eps_n (inc > h_max here)
                dxi[:, b] += (dw[b][:, None] * u).T[:, :, None] * diff  # the blend weight's own derivative
        else:
            xi, dxi = xi_prev, strain.new_zeros(6, n, 0)
        xf, dxf = self._bound_jvp(xi, dxi)
        x, dx = torch.cat([e, r, xf], -1), torch.cat([de, dr, dxf], 2)
        f, df = self._f_jvp(x, dx)
        if self.C_el is not None:
            f = f + (e - xi[:, :6]) @ self.C_el.T
            df = df + (de - dxi[..., :6]) @ self.C_el.T
        return f * s[2], df.permute(1, 2, 0) * s[2], xi

    def rate_tangent(self, strain: torch.Tensor, prev_strain: torch.Tensor, dt: torch.Tensor,
                     xi: torch.Tensor) -> torch.Tensor:
        """The part of the tangent that grows as 1/dt, in normalized units: (n, 6, 6).

        A = dF/dr . dr/dq at the inputs of F after the increment (strain, prev_strain (n, 6),
        dt (n,), xi = xi_n (n, n_state); an odd model: the mean of both sides'), r = asinh(q),
        q = (eps_n - eps_{n-1}) / (dt r_s).  The
        consistent tangent is d sigma_n/d eps_n = (sigma_s / (r_s dt)) A + terms bounded as dt -> 0
        at a fixed strain rate, so a short step (a cut-back) sees essentially A: where its
        symmetric part has a negative eigenvalue the model softens at short steps.
        Differentiable (training's ``rate_stability_weight`` keeps sym(A) positive definite).
        """
        if self.arch.odd:
            n = strain.shape[0]
            A = self._rate_tangent(*self._two_sides(strain, prev_strain, dt, xi))
            return 0.5 * (A[:n] + A[n:])
        return self._rate_tangent(strain, prev_strain, dt, xi)

    def _rate_tangent(self, strain, prev_strain, dt, xi) -> torch.Tensor:
        s = self.scales.to(strain.dtype)
        e = strain / s[0]
        q = (strain - prev_strain) / (dt[..., None] * s[1])
        x = torch.cat([e, torch.asinh(q), self._bound(xi)], dim=-1)
        n = x.shape[0]
        dx = x.new_zeros(6, n, x.shape[1])
        dx[:, :, 6:12] = torch.diag_embed(torch.rsqrt(1.0 + q * q)).permute(1, 0, 2)
        return self._f_jvp(x, dx, inplace=False)[1].permute(1, 2, 0)

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        """F with its linear skip at inputs x (..., in) = [e, asinh q, bounded xi]: stress / s_s (..., 6)."""
        return self.F(x) + self.F_linear(x)

    def _f_jvp(self, x: torch.Tensor, dx: torch.Tensor, inplace: bool = True):
        """F with its linear skip at inputs x (n, in), and its derivatives (m, n, 6) along dx (m, n, in)."""
        f, df = _mlp_jvp(self.F, x, dx, inplace)
        return f + self.F_linear(x), df + dx @ self.F_linear.weight.T

    # -- whole trajectories -------------------------------------------------------------
    def rollout(self, strain: torch.Tensor, time: torch.Tensor, return_xi: bool = False):
        """Stress along whole paths.

        strain (B, T+1, 6) with strain[:, 0] the initial state, time (B, T+1) [s]
        increasing.  Returns stress (B, T, 6) at increments 1..T (and xi (B, T, n_state)).
        """
        B, T1, _ = strain.shape
        xi = strain.new_zeros(B, self.n_state)
        dts = time[:, 1:] - time[:, :-1]
        out, xis = [], []
        for n in range(1, T1):
            sig, xi = self.step(strain[:, n], strain[:, n - 1], dts[:, n - 1], xi)
            out.append(sig)
            if return_xi:
                xis.append(xi)
        stress = torch.stack(out, dim=1) if out else strain.new_zeros(B, 0, 6)
        if return_xi:
            return stress, (torch.stack(xis, dim=1) if xis else strain.new_zeros(B, 0, self.n_state))
        return stress


def _copy_linear(new: nn.Linear, old: nn.Linear, rows: torch.Tensor, last: bool, keep_new_cols: bool,
                 cols: torch.Tensor | None = None):
    """Embed ``old`` in ``new``: old output j -> new row rows[j], old input i -> new input cols[i] (default:
    the inputs are a prefix).  New inputs of old rows are zeroed unless ``keep_new_cols`` (first layer: new
    internal variables, which are 0 until G moves them); new rows of the last layer are zeroed (so new
    outputs are 0)."""
    cols = torch.arange(old.in_features) if cols is None else cols
    with torch.no_grad():
        if last:
            new.weight.zero_()
            new.bias.zero_()
        if not keep_new_cols:
            fresh = torch.ones(new.in_features, dtype=torch.bool)
            fresh[cols] = False
            new.weight[rows[:, None], torch.nonzero(fresh).squeeze(1)[None, :]] = 0.0
        new.weight[rows[:, None], cols[None, :]] = old.weight.to(new.weight)
        new.bias[rows] = old.bias.to(new.bias)


def grow(model: "RNO", arch: RNOArch) -> "RNO":
    """A larger RNO that computes exactly what ``model`` computes: more internal variables (k), wider
    hidden layers and/or more residual blocks (same hidden layers, activation and flags).

    Used to continue training with more capacity (``training.init_from`` a smaller surrogate).  New
    internal variables start at 0 and stay there until training moves G's new outputs (zero rows);
    F and G see them through fresh random input weights, so that the loss has a gradient towards them.
    New hidden units have fresh random inputs and zero weights to the next layer; new residual blocks
    have fresh random inputs and zero output weights (existing ones keep their width); G's trial-stress
    input (``g_trial``), when turned on, starts with zero weights.  The normalization
    and the integration setting are kept.  Raises ValueError when ``arch`` is not a superset.
    """
    old = model.arch
    grown = ("k", "f_hidden", "g_hidden", "f_blocks", "g_blocks", "g_trial")
    diff = [f.name for f in fields(RNOArch) if f.name not in grown and getattr(old, f.name) != getattr(arch, f.name)]
    if diff:
        raise ValueError(f"can only grow k, hidden widths, residual blocks and G's trial-stress input; "
                         f"{', '.join(diff)} differ")
    if old.g_trial and not arch.g_trial:
        raise ValueError("can only grow: G's trial-stress input (g_trial) cannot be removed")
    if arch.k < old.k or len(arch.f_hidden) != len(old.f_hidden) or len(arch.g_hidden) != len(old.g_hidden) \
            or any(a < b for a, b in zip(list(arch.f_hidden) + list(arch.g_hidden), list(old.f_hidden) + list(old.g_hidden))) \
            or arch.f_blocks < old.f_blocks or arch.g_blocks < old.g_blocks:
        raise ValueError(f"can only grow: k {old.k} -> {arch.k}, F {old.f_hidden} -> {arch.f_hidden}, "
                         f"G {old.g_hidden} -> {arch.g_hidden}, residual blocks {old.f_blocks}/{old.g_blocks} -> "
                         f"{arch.f_blocks}/{arch.g_blocks} (same hidden layers, nothing smaller)")
    for side in ("f", "g"):
        hid_old, hid_new = getattr(old, side + "_hidden"), getattr(arch, side + "_hidden")
        if getattr(old, side + "_blocks") and hid_old and hid_new[-1] != hid_old[-1]:
            raise ValueError(f"can only grow: {side.upper()}'s residual blocks keep their width "
                             f"{hid_old[-1]} ({side}_hidden {hid_old} -> {hid_new})")
    ref = next(model.parameters())
    new = RNO(arch, model.strain_scale, model.rate_scale, model.stress_scale).to(ref)
    new.max_substep_strain = model.max_substep_strain

    def embed(dst: nn.Sequential, src: nn.Sequential, out_rows: torch.Tensor, in_cols=None, zero_cols=None) -> None:
        lin_d = [m for m in dst if isinstance(m, nn.Linear)]
        lin_s = [m for m in src if isinstance(m, nn.Linear)]
        for i, (d, s) in enumerate(zip(lin_d, lin_s)):
            last = i == len(lin_s) - 1
            rows = out_rows if last else torch.arange(s.out_features)
            _copy_linear(d, s, rows, last, keep_new_cols=(i == 0), cols=in_cols if i == 0 else None)
        if zero_cols is not None:  # new inputs that are not 0 at the start: no weight on them yet
            with torch.no_grad():
                lin_d[0].weight[:, zero_cols] = 0.0
        blk_d = [m for m in dst if isinstance(m, Residual)]
        blk_s = [m for m in src if isinstance(m, Residual)]
        with torch.no_grad():
            for i, d in enumerate(blk_d):
                if i < len(blk_s):  # an existing block (same width): copied
                    d.load_state_dict(blk_s[i].state_dict())
                else:  # a new block: fresh inputs, zero outputs (adds 0 until trained)
                    d.inner[-1].weight.zero_()
                    d.inner[-1].bias.zero_()

    embed(new.F, model.F, torch.arange(old.strain_dim))
    if model.G is not None:
        if old.g_increment:  # outputs [A (k), B (k x 6) row-major]: B's rows move by the new k
            k0, k1 = old.k, arch.k
            rows = torch.cat([torch.arange(k0), k1 + torch.arange(k0 * 6)])
        else:
            rows = torch.arange(old.k)
        # G's inputs: [strain (and rate) part, xi (k), trial stress (6, with g_trial)]; new xi go after
        # the old ones, so the old trial-stress inputs move by the new k
        n_e, n_trial = arch.g_sizes()[0] - arch.k - (6 if arch.g_trial else 0), 6 if old.g_trial else 0
        cols = torch.cat([torch.arange(n_e + old.k), n_e + arch.k + torch.arange(n_trial)])
        trial_new = n_e + arch.k + torch.arange(6) if arch.g_trial and not old.g_trial else None
        embed(new.G, model.G, rows, cols, trial_new)
    with torch.no_grad():
        new.F_linear.weight.zero_()
        new.F_linear.weight[:, :model.F_linear.in_features] = model.F_linear.weight
        if model.C_el is not None:
            new.C_el.copy_(model.C_el)
        new.scales.copy_(model.scales)
    return new


def symmetrized(model: "RNO") -> "RNO":
    """The odd model (``arch.odd``) with the weights of ``model``: (sigma(eps) - sigma(-eps)) / 2 of
    its response (the state doubles, to the path's and its negative's internal variables).  Not the
    same function unless ``model`` was odd already; for a material that is odd (the Taylor RVE),
    the part it removes is error.  Used to continue training an existing surrogate as an odd one
    (``training.init_from`` with ``[model] odd = true``)."""
    if model.arch.odd:
        return model
    arch = copy.deepcopy(model.arch)
    arch.odd = True
    new = RNO(arch, model.strain_scale, model.rate_scale, model.stress_scale).to(next(model.parameters()))
    new.load_state_dict(model.state_dict())
    new.max_substep_strain = model.max_substep_strain
    return new


def _prune_mlp(mlp: nn.Sequential, x: torch.Tensor, widths: List[int]) -> nn.Sequential:
    """``mlp`` with its hidden layers cut to ``widths``, fitted to it on the inputs x (n, in).

    The units to keep are chosen from the last hidden layer back: those with the largest mean
    |activation| (on x) x norm of their weights into the next layer's kept units (for the last
    hidden layer: into the outputs), so that a unit that only feeds dropped units counts for
    nothing.  Then, from the first layer on, each next linear layer is refitted by least squares
    so that it reproduces the original network's pre-activations of its kept units (last: the
    outputs) from the kept units before it, as they are after the refits upstream."""
    lin = [m for m in mlp if isinstance(m, nn.Linear)]
    acts = [m for m in mlp if not isinstance(m, nn.Linear)]
    with torch.no_grad():
        pre, post, h = [], [], x  # the original pre-activations and activations of every layer
        for i, layer in enumerate(lin):
            pre.append(layer(h))
            h = acts[i](pre[-1]) if i < len(acts) else pre[-1]
            post.append(h)
        keep: List[torch.Tensor] = [torch.arange(lin[-1].out_features)]
        for i in reversed(range(len(widths))):  # hidden layer i feeds lin[i + 1]
            score = post[i].abs().mean(0) * lin[i + 1].weight[keep[0]].norm(dim=0)
            keep.insert(0, torch.argsort(score, descending=True)[:widths[i]])
        W, b, h = lin[0].weight[keep[0]], lin[0].bias[keep[0]], x
        layers: List[nn.Module] = []
        for i in range(len(widths)):
            layers += [nn.Linear(W.shape[1], W.shape[0]), copy.deepcopy(acts[i])]
            layers[-2].weight.copy_(W)
            layers[-2].bias.copy_(b)
            h = acts[i](h @ W.T + b)
            target = pre[i + 1][:, keep[i + 1]]
            sol = torch.linalg.lstsq(torch.cat([h, torch.ones_like(h[:, :1])], 1), target).solution
            W, b = sol[:-1].T, sol[-1]
        layers.append(nn.Linear(W.shape[1], W.shape[0]))
        layers[-1].weight.copy_(W)
        layers[-1].bias.copy_(b)
    return nn.Sequential(*layers).to(x)


def shrink(model: "RNO", arch: RNOArch, strain: torch.Tensor, time: torch.Tensor) -> "RNO":
    """A smaller RNO (narrower hidden layers; the same k, depth, activation and flags) that approximates
    ``model`` along the paths strain (B, T+1, 6), time (B, T+1).

    The inputs that F and G see along these paths are recorded (``model``'s own rollout, sub-steps
    included), and each MLP is cut to the new widths with least-squares refits (:func:`_prune_mlp`).
    The linear skip, the normalization and the integration setting are kept.  Used to train a
    cheaper model from a larger one (``training.init_from``): the start is much closer than a
    random one (the 128 x 128 fast model cut to 64 x 64: 8.4 % on held-out walks, against its 3.0 %).
    Raises ValueError when ``arch`` is not a narrowing of ``model.arch``.
    """
    old = model.arch
    diff = [f.name for f in fields(RNOArch) if f.name not in ("f_hidden", "g_hidden")
            and getattr(old, f.name) != getattr(arch, f.name)]
    if diff:
        raise ValueError(f"can only narrow hidden layers; {', '.join(diff)} differ")
    if old.f_blocks or old.g_blocks:
        raise ValueError("can only narrow a model without residual blocks (f_blocks, g_blocks)")
    if len(arch.f_hidden) != len(old.f_hidden) or len(arch.g_hidden) != len(old.g_hidden) \
            or any(a > b for a, b in zip(list(arch.f_hidden) + list(arch.g_hidden), list(old.f_hidden) + list(old.g_hidden))):
        raise ValueError(f"can only narrow: F {old.f_hidden} -> {arch.f_hidden}, G {old.g_hidden} -> {arch.g_hidden} "
                         f"(same depth, nothing wider)")
    ref = next(model.parameters())
    seen: dict = {"F": [], "G": []}
    hooks = [getattr(model, name).register_forward_hook(
        lambda m, inp, out, name=name: seen[name].append(inp[0].detach().reshape(-1, inp[0].shape[-1])))
        for name in ("F", "G") if getattr(model, name) is not None]
    try:
        with torch.no_grad():
            model.rollout(strain.to(ref), time.to(ref))
    finally:
        for h in hooks:
            h.remove()
    new = RNO(arch, model.strain_scale, model.rate_scale, model.stress_scale).to(ref)
    new.max_substep_strain = model.max_substep_strain
    new.F = _prune_mlp(model.F, torch.cat(seen["F"]), list(arch.f_hidden))
    if model.G is not None:
        new.G = _prune_mlp(model.G, torch.cat(seen["G"]), list(arch.g_hidden))
    with torch.no_grad():
        new.F_linear.weight.copy_(model.F_linear.weight)
        if model.C_el is not None:
            new.C_el.copy_(model.C_el)
        new.scales.copy_(model.scales)
    return new


def relative_l2(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Relative L2 error per path: ||pred - target|| / ||target|| over (T, 6); shape (B,)."""
    num = ((pred - target) ** 2).sum(dim=(-2, -1))
    den = (target ** 2).sum(dim=(-2, -1))
    return torch.sqrt(num / (den + eps))


def refine_path(strain: torch.Tensor, time: torch.Tensor, factor: int):
    """Linear-in-time interpolation with ``factor`` sub-steps per increment.

    Returns (strain (B, factor*T+1, 6), time (B, factor*T+1)); the original points are
    every ``factor``-th row.
    """
    if factor == 1:
        return strain, time
    w = torch.arange(factor, dtype=strain.dtype, device=strain.device) / factor  # (f,)
    s0, s1 = strain[:, :-1], strain[:, 1:]
    t0, t1 = time[:, :-1], time[:, 1:]
    fs = s0[:, :, None] + w[None, None, :, None] * (s1 - s0)[:, :, None]  # (B,T,f,6)
    ft = t0[:, :, None] + w[None, None, :] * (t1 - t0)[:, :, None]
    B, T = s0.shape[:2]
    fs = torch.cat([fs.reshape(B, T * factor, 6), strain[:, -1:]], dim=1)
    ft = torch.cat([ft.reshape(B, T * factor), time[:, -1:]], dim=1)
    return fs, ft


def path_at_dt_factor(strain: torch.Tensor, time: torch.Tensor, factor: float):
    """The path that a model runs at step size dt*factor, and where it is scored.

    factor = m (integer): the path coarsened to every m-th point; factor = 1/m: its m-times finer
    linear-in-time interpolation (:func:`refine_path`). Returns the path's strain (B, T'+1, 6) and
    time (B, T'+1), the rows (T',) of it that are scored (rows 1.. of a coarsened path, every m-th
    of a refined one) and, for each, the index (T',) into the original rows 1..T (the data's
    stresses there are the targets).
    """
    if factor >= 1:
        m = int(round(factor))
        idx = torch.arange(m, strain.shape[1], m, device=strain.device)
        full = torch.cat([idx.new_zeros(1), idx])
        return strain[:, full], time[:, full], torch.arange(1, full.numel(), device=strain.device), idx - 1
    m = int(round(1.0 / factor))
    fs, ft = refine_path(strain, time, m)
    return fs, ft, torch.arange(m, fs.shape[1], m, device=strain.device), torch.arange(strain.shape[1] - 1,
                                                                                       device=strain.device)


def rollout_at_dt_factor(model: RNO, strain: torch.Tensor, time: torch.Tensor, factor: float):
    """Run the model at step size dt*factor (:func:`path_at_dt_factor`) and return (pred, target index):
    pred (B, T', 6) at the scored rows and the indices (T',) into the original 1..T rows."""
    s, t, rows, idx = path_at_dt_factor(strain, time, factor)
    pred = model.rollout(s, t)  # rows 1.. of the path
    if factor < 1:
        m = int(round(1.0 / factor))
        pred = pred[:, m - 1::m]  # = rows - 1, as a view (the order of operations training was run with)
    return pred, idx
