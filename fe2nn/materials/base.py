"""The one batched constitutive interface between the scales.

Every law that maps strain history to stress -- elastic, J2, a single crystal,
a Taylor or FFT polycrystal RVE, the RNO surrogate -- is a :class:`Material`:

    state = material.initial_state(n)
    stress, tangent, new_state = material.update(strain, dt, state)

* ``strain``: total small strain at the end of the increment, Mandel notation,
  torch float64 tensor of shape (n, 6) [-].
* ``dt``: increment duration [s] (> 0; rate-independent laws ignore it): a
  float, or a tensor of shape (n,) when points advance with different steps
  (dataset generation batches paths with non-uniform steps).
* ``state``: a dict of tensors, every entry with leading dimension n.  The
  material never mutates it; ``update`` returns a new dict.  The caller owns
  it: it keeps the last converged state and passes it to every trial
  ``update`` of the next increment, commits the returned one on convergence
  and simply drops it on a cut-back (rollback is free).  Laws that need the
  previous strain (rates, increments) keep it in their state under ``"strain"``.
* ``stress``: Cauchy stress (n, 6) [Pa], Mandel.
* ``tangent``: consistent algorithmic tangent d(stress)/d(strain) (n, 6, 6)
  [Pa], Mandel.

A material that cannot complete an increment (local Newton or RVE solver not
converged) raises :class:`MaterialConvergenceError`; it never returns NaN.
A Newton solver needs no tangent where the residual turns out converged. It therefore
calls ``stress, new_state, tangent = material.stress_update(strain, dt, state)``, which
returns the tangent when it comes with the stress (the default: one ``update``) and None
where a material computes it in a separate pass (the RNO surrogate); then
``material.tangent(strain, dt, state)`` gives it, for the same arguments, only when the
solver needs it.  Both default to ``update``, so a new law implements ``update`` alone.

A material may remember its last successful ``update`` to continue from it when it is
called again from the same state and step (the next Newton iteration): the single crystal
keeps its substeps and local roots, so that its stress is smooth within a step (its module
doc).  A call from another state or step must not depend on it.  ``forget_last_update()``
drops what is kept (e.g. to time a first call); the default keeps nothing.  Such a material
sets ``keeps_last_update = True``: what it keeps is matched point by point for the same
batch, so a caller that iterates on part of the points (the FFT RVE on its unconverged
cells) still calls it on the whole batch, and one that integrates other points from states that
may coincide (two virgin points retried one at a time) drops it in between.

After each ``update`` a material may publish diagnostics in ``material.info``
(a dict of tensors with leading dimension n, e.g. ``"hill_mandel"`` or
``"iterations"``).  A law with plasticity keeps the accumulated equivalent
plastic strain [-] as the (n,) state entry ``"p"`` (RVEs: its volume average),
which the macro solver writes as an output field.
"""
from __future__ import annotations

import abc
from typing import Dict, Optional, Tuple

import numpy as np
import torch

State = Dict[str, torch.Tensor]
Response = Tuple[torch.Tensor, torch.Tensor, State]


class MaterialConvergenceError(RuntimeError):
    """An increment could not be completed; the caller should cut back.

    ``failed`` holds a boolean mask (n,) of the points that failed, when known.
    """

    def __init__(self, message: str, failed: torch.Tensor | None = None):
        super().__init__(message)
        self.failed = failed


class Material(abc.ABC):
    """Batched small-strain constitutive law (see module docstring)."""

    #: torch dtype and device the material computes in
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    #: the material continues from its last update when called again from the same state and
    #: step, for the same batch of points (module docstring)
    keeps_last_update: bool = False

    def __init__(self) -> None:
        self.info: Dict[str, torch.Tensor] = {}

    @abc.abstractmethod
    def initial_state(self, n: int) -> State:
        """State of n virgin points."""

    @abc.abstractmethod
    def update(self, strain: torch.Tensor, dt: float, state: State) -> Response:
        """Stress (n,6), tangent (n,6,6) and new state at total strain ``strain``."""

    def forget_last_update(self) -> None:
        """Drop what is kept of the last update (module docstring); the next call integrates
        afresh.  Default: nothing is kept."""

    def stress_update(self, strain: torch.Tensor, dt, state: State) -> Tuple[torch.Tensor, State, Optional[torch.Tensor]]:
        """(stress (n,6), new state, tangent (n,6,6) or None): the tangent only where it comes
        with the stress; otherwise :meth:`tangent` computes it on demand.  Default: ``update``."""
        stress, tangent, new_state = self.update(strain, dt, state)
        return stress, new_state, tangent

    def tangent(self, strain: torch.Tensor, dt, state: State) -> torch.Tensor:
        """Consistent tangent (n,6,6) [Pa] of the increment to ``strain`` from ``state``
        (the arguments of a :meth:`stress_update` that returned None).  Default: ``update``."""
        return self.update(strain, dt, state)[1]

    # -- helpers shared by all materials -------------------------------------------------
    def as_dt(self, dt, n: int) -> torch.Tensor:
        """Time increment(s) as a tensor of shape (n,) [s]; must be > 0."""
        t = self.as_tensor(dt)
        t = t.expand(n) if t.ndim == 0 else t
        if t.shape != (n,):
            raise ValueError(f"dt must be a scalar or have shape ({n},), got {tuple(t.shape)}")
        return t

    def as_tensor(self, x) -> torch.Tensor:
        """Convert an array-like to this material's dtype/device (no copy when possible)."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        return torch.as_tensor(x, dtype=self.dtype, device=self.device)

    @property
    def state_names(self) -> Tuple[str, ...]:
        """Names of the state entries (from a 1-point initial state)."""
        return tuple(self.initial_state(1).keys())


def take_state(state: State, index) -> State:
    """Sub-state of the points selected by ``index`` (mask or indices)."""
    return {k: v[index] for k, v in state.items()}


def put_state(state: State, index, sub: State) -> State:
    """Copy of ``state`` with the points ``index`` replaced by ``sub``."""
    out = {k: v.clone() for k, v in state.items()}
    for k in out:
        out[k][index] = sub[k]
    return out


def concat_states(states) -> State:
    """Concatenate states along the point dimension."""
    states = list(states)
    return {k: torch.cat([s[k] for s in states], dim=0) for k in states[0]}
