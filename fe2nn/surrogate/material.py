"""A trained RNO as an fe2nn :class:`~fe2nn.materials.base.Material`.

    mat = RNOMaterial("surrogates/aluminium_taylor")
    state = mat.initial_state(n)          # {"xi": (n,k), "strain": (n,6), "path_length": (n,)}
    stress, tangent, new_state = mat.update(strain, dt, state)
    ood = mat.envelope_violation(strain, (strain - state["strain"]) / dt)   # (n,) bool

Inputs/outputs in SI units and Mandel notation.  The tangent is the exact consistent
d sigma_n / d eps_n of the time-discrete model (strain, rate 1/dt and xi_n paths).
After every update ``mat.info["ood"]`` holds the envelope-violation mask, and
``"ood_strain"`` / ``"ood_rate"`` / ``"ood_path"`` its causes (strain, strain rate, or a
strain history longer than any training path: see :meth:`RNOMaterial.envelope_reasons`).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np
import torch

from fe2nn import mandel
from fe2nn.fe2 import OOD_CAUSES, OOD_KEY
from fe2nn.materials.base import Material, Response, State
from fe2nn.surrogate.rno import RNO


def compute_envelope(strain: np.ndarray, time: np.ndarray) -> Dict[str, Any]:
    """Training envelope of paths strain (N, T+1, 6), time (N, T+1).

    Per-component strain range, maximum equivalent strain sqrt(2/3 e':e'), per-component
    strain-rate range and the range of the strain-rate norm |d eps/dt| (Frobenius,
    Mandel), its minimum over non-zero rates (holds have zero rate), and the longest
    strain path sum_n |eps_n - eps_{n-1}| (Mandel norm) of a path: how much history the
    model has seen.
    """
    s = torch.as_tensor(strain, dtype=torch.float64)
    t = torch.as_tensor(time, dtype=torch.float64)
    rate = (s[:, 1:] - s[:, :-1]) / (t[:, 1:] - t[:, :-1])[..., None]
    rnorm = torch.linalg.norm(rate, dim=-1)
    nz = rnorm[rnorm > 0]
    return {
        "strain_min": s.amin(dim=(0, 1)).tolist(),
        "strain_max": s.amax(dim=(0, 1)).tolist(),
        "equivalent_strain_max": float(mandel.equivalent_strain(s).max()),
        "strain_rate_min": rate.amin(dim=(0, 1)).tolist(),
        "strain_rate_max": rate.amax(dim=(0, 1)).tolist(),
        "strain_rate_norm_max": float(rnorm.max()),
        "strain_rate_norm_min_nonzero": float(nz.min()) if nz.numel() else 0.0,
        "strain_path_length_max": float(torch.linalg.norm(s[:, 1:] - s[:, :-1], dim=-1).sum(dim=1).max()),
    }


class RNOMaterial(Material):
    """RNO surrogate material.

    ``path_or_model``: a surrogate directory / card path (loaded with
    :func:`fe2nn.surrogate.card.load_surrogate`) or an :class:`RNO` instance (then
    ``envelope`` may be given as a dict like :func:`compute_envelope` returns).
    ``envelope_margin``: relative slack of the out-of-distribution check.
    ``tangent_dtype``: "float64" (exact) or "float32" precision of the Newton tangent; "auto"
    (:meth:`auto_tangent_dtype`): float32 on a CPU, float64 on a GPU.
    ``chunk``: points per tangent pass (None: :meth:`default_chunk` for the device).

    State: ``xi`` (n, k) internal variables [-] (2k for an odd model), ``strain`` (n, 6) strain of the last
    converged increment [-], ``path_length`` (n,) accumulated strain path length
    sum |d eps| (Mandel norm) [-] (for the out-of-distribution check; a state without it
    counts from zero).  ``dt`` must be > 0.
    """

    #: scalar per-point info the macro output writes as fields and counts per step
    point_info = (OOD_KEY, *OOD_CAUSES.values())

    def __init__(self, path_or_model: str | os.PathLike | RNO, device: str | torch.device = "cpu",
                 envelope: Optional[Dict[str, Any]] = None, envelope_margin: float = 0.05,
                 chunk: Optional[int] = None, tangent_dtype: str = "float64"):
        super().__init__()
        self.device = torch.device(device)
        if isinstance(path_or_model, RNO):
            self.model, self.card = path_or_model, {"envelope": envelope} if envelope else {}
        else:
            from fe2nn.surrogate.card import load_surrogate

            self.model, self.card = load_surrogate(path_or_model, self.device)
        self.model = self.model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.k = self.model.n_state  # width of the state's xi (2 x the model's k for an odd model)
        self.chunk = chunk or self.default_chunk(self.device)
        # The stress and internal variables always come from the float64 forward pass; the
        # Newton tangent may be computed in float32 (relative error ~1e-7, same iteration
        # counts, ~2.5x cheaper on CPUs).
        if tangent_dtype == "auto":
            tangent_dtype = self.auto_tangent_dtype(self.device)
        self.tangent_dtype = getattr(torch, tangent_dtype)
        self._model_t = self.model
        if self.tangent_dtype != self.dtype:
            import copy

            self._model_t = copy.deepcopy(self.model).to(self.tangent_dtype).eval()
        self.envelope_margin = float(envelope_margin)
        env = envelope if envelope is not None else self.card.get("envelope")
        self._env = None
        if env:
            self._env = {key: torch.as_tensor(env[key], dtype=self.dtype, device=self.device)
                         for key in ("strain_min", "strain_max", "equivalent_strain_max", "strain_rate_norm_max")}
            # cards written before the path length was recorded: no history check
            if env.get("strain_path_length_max") is not None:
                self._env["strain_path_length_max"] = torch.as_tensor(
                    env["strain_path_length_max"], dtype=self.dtype, device=self.device)
        else:  # no envelope to check against: no out-of-distribution fields, and the monitor says so
            self.point_info = ()

    @staticmethod
    def auto_tangent_dtype(device: torch.device) -> str:
        """The cheaper tangent precision per Newton iteration: on a CPU "float32", a separate pass
        after the float64 stress (float64 matrix products cost ~2.5x float32 ones; plate demo,
        one core); on a GPU "float64", the tangent from the stress pass itself (launch-bound, a
        pass costs about the same in either precision: the plate demo's constitutive time on an
        H100 fell from 3.7 to 2.2 s)."""
        return "float32" if device.type == "cpu" else "float64"

    @staticmethod
    def default_chunk(device: torch.device) -> int:
        """Points per tangent pass when not given: on a CPU 1024, so that a chunk's derivatives
        (6 x 1024 x 128 floats, 3 MB) stay in the core's cache (the plate demo's constitutive time
        on one core fell 6-9 % against one pass of 4832 points); on a GPU 16384 (one launch
        sequence for a rank's points)."""
        return 1024 if device.type == "cpu" else 16384

    def initial_state(self, n: int) -> State:
        z = dict(dtype=self.dtype, device=self.device)
        return {"xi": torch.zeros(n, self.k, **z), "strain": torch.zeros(n, 6, **z),
                "path_length": torch.zeros(n, **z)}

    def _inputs(self, strain, dt):
        strain = self.as_tensor(strain)
        n = strain.shape[0]
        if strain.shape != (n, 6):
            raise ValueError(f"strain must have shape (n, 6), got {tuple(strain.shape)}")
        h = self.as_dt(dt, n)
        if torch.any(h <= 0):
            raise ValueError("dt must be > 0")
        return strain, h

    def update(self, strain: torch.Tensor, dt, state: State) -> Response:
        stress, new_state, tangent = self.stress_update(strain, dt, state)
        if tangent is None:
            tangent = self.tangent(strain, dt, state)
        return stress, tangent, new_state

    def stress_update(self, strain: torch.Tensor, dt, state: State):
        """Stress, new state and -- with a float64 tangent, which comes from the same pass --
        the tangent; with a float32 tangent None (a separate pass, :meth:`tangent`)."""
        strain, h = self._inputs(strain, dt)
        prev, xi0 = state["strain"], state["xi"]
        tangent = None
        with torch.no_grad():
            if self.tangent_dtype == self.dtype:
                stress, tangent, xi = self.model.step_with_tangent(strain, prev, h, xi0, chunk=self.chunk)
            else:
                stress, xi = self.model.step(strain, prev, h, xi0, ordered=True)
        path = state.get("path_length")
        path = (torch.zeros_like(h) if path is None else path) + torch.linalg.vector_norm(strain - prev, dim=-1)
        reasons = self.envelope_reasons(strain, (strain - prev) / h[:, None], path)
        self.info = {OOD_KEY: reasons["strain"] | reasons["rate"] | reasons["path"],
                     **{key: reasons[cause] for cause, key in OOD_CAUSES.items()}}
        return stress, {"xi": xi, "strain": strain.clone(), "path_length": path}, tangent

    def tangent(self, strain: torch.Tensor, dt, state: State) -> torch.Tensor:
        strain, h = self._inputs(strain, dt)
        td = self.tangent_dtype
        with torch.no_grad():
            _, tangent, _ = self._model_t.step_with_tangent(strain.to(td), state["strain"].to(td), h.to(td),
                                                            state["xi"].to(td), chunk=self.chunk)
        return tangent.to(self.dtype)

    def envelope_violation(self, strain: torch.Tensor, strain_rate: torch.Tensor,
                           path_length: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Bool mask (n,) of points outside the training envelope (see :meth:`envelope_reasons`)."""
        reasons = self.envelope_reasons(strain, strain_rate, path_length)
        return reasons["strain"] | reasons["rate"] | reasons["path"]

    def envelope_reasons(self, strain: torch.Tensor, strain_rate: torch.Tensor,
                         path_length: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Bool masks (n,) of points outside the training envelope, by cause.

        ``"strain"``: a strain component leaves [min - m*w, max + m*w] (w: the component's
        training range, m: ``envelope_margin``) or the equivalent strain exceeds (1+m)
        times the training maximum.  ``"rate"``: the strain-rate norm exceeds (1+m) times
        the training maximum.  Slow rates are not flagged (holds and unloading regions
        legitimately have rates near zero).  ``"path"``: the accumulated strain path length
        ``path_length`` (n,) exceeds (1+m) times the longest training path (a history longer
        than any the model has seen, e.g. many cycles); False when not given or the card
        does not record it.  All False without an envelope.
        """
        strain = self.as_tensor(strain)
        rate = self.as_tensor(strain_rate)
        n = strain.shape[0]
        none = torch.zeros(n, dtype=torch.bool, device=self.device)
        if self._env is None:
            return {"strain": none, "rate": none, "path": none}
        e, m = self._env, self.envelope_margin
        w = e["strain_max"] - e["strain_min"]
        bad = ((strain < e["strain_min"] - m * w) | (strain > e["strain_max"] + m * w)).any(dim=-1)
        bad |= mandel.equivalent_strain(strain) > (1 + m) * e["equivalent_strain_max"]
        fast = torch.linalg.norm(rate, dim=-1) > (1 + m) * e["strain_rate_norm_max"]
        long = none
        if path_length is not None and "strain_path_length_max" in e:
            long = self.as_tensor(path_length) > (1 + m) * e["strain_path_length_max"]
        return {"strain": bad, "rate": fast, "path": long}
