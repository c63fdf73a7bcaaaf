"""Uniaxial-stress hysteresis check of a surrogate against the RVE that made its data.

The load path of the validation demo (``demos/validate_small.toml``) at one material point:
axial strain eps_22 from 0 to +a (tension), back to 0 (unloading) and on to -a
(compression), three branches of equal duration, every stress component but sigma_22
held at zero by mixed control (:func:`fe2nn.materials.drivers.uniaxial_stress`).  The same
path drives the surrogate and the reference material.  Reverse yielding after unloading
(the Bauschinger transition) is where surrogates of polycrystals are weakest, and a path
error averaged over a whole trajectory hides it; this check names it in about a minute (Taylor
RVE) where the FE² validation takes several.

Metric per curve (as the reaction deviation of ``fe2nn validate``): the largest
|sigma_22,surrogate - sigma_22,reference| along the whole curve divided by the largest
|sigma_22,reference|, and the same on the tension branch alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch

from fe2nn.errors import UserError
from fe2nn.io_utils import pyplot, save_figure
from fe2nn.materials.base import Material
from fe2nn.materials.drivers import uniaxial_stress

#: axial strain amplitudes a [-]
AMPLITUDES = (0.003, 0.005, 0.01)
#: increments per branch (tension, unloading, compression)
STEPS_PER_BRANCH = 32


def envelope_rates(card: Dict[str, Any]) -> list[float]:
    """Three axial strain rates [1/s] inside the card's strain-rate envelope: 1.3 x its lower
    end, the geometric middle and its upper end / 1.3 (``strain_rate_norm_min_nonzero`` and
    ``strain_rate_norm_max``)."""
    env = card.get("envelope", {})
    lo, hi = env.get("strain_rate_norm_min_nonzero"), env.get("strain_rate_norm_max")
    if not (lo and hi and 0 < lo < hi):
        raise UserError("surrogate card: the envelope has no strain-rate range "
                        "(strain_rate_norm_min_nonzero < strain_rate_norm_max) to choose uniaxial rates from")
    return [1.3 * lo, math.sqrt(lo * hi), hi / 1.3]


def cycle(amplitude: float, rate: float, steps_per_branch: int = STEPS_PER_BRANCH):
    """Axial strain (3 m + 1,) and time (3 m + 1,) [s] of one tension-unloading-compression
    cycle of amplitude a at the axial strain rate ``rate`` [1/s] (branch time a / rate)."""
    m = steps_per_branch
    t_branch = amplitude / rate
    time = torch.linspace(0.0, 3.0 * t_branch, 3 * m + 1, dtype=torch.float64)
    shape = np.interp(time.numpy(), [0, t_branch, 2 * t_branch, 3 * t_branch], [0, 1, 0, -1])
    return amplitude * torch.as_tensor(shape), time


def compare(surrogate: Material, reference: Material, rates: Sequence[float],
            amplitudes: Sequence[float] = AMPLITUDES, steps_per_branch: int = STEPS_PER_BRANCH) -> Dict[str, Any]:
    """Run every (rate, amplitude) cycle through both materials.

    Returns {"cases": [{amplitude, rate, max_deviation, max_deviation_tension}], "max_deviation",
    "curves": [(rate, [(strain_22 (T+1,), stress_22 surrogate, stress_22 reference) per amplitude])]}
    with stresses in Pa.  A handful of single-point runs of a few hundred increments: the loop
    is over cases, not over points.
    """
    cases, curves = [], []
    m = steps_per_branch
    for rate in rates:
        loops = []
        for a in amplitudes:
            eps22, time = cycle(float(a), float(rate), m)
            ref = uniaxial_stress(reference, eps22.to(reference.dtype), time, direction=1)[1][0, :, 1].double().cpu()
            sur = uniaxial_stress(surrogate, eps22.to(surrogate.dtype), time, direction=1)[1][0, :, 1].double().cpu()
            scale = float(ref.abs().max().clamp(min=1e-30))
            dev = (sur - ref).abs()
            cases.append({"amplitude": float(a), "rate": float(rate), "max_deviation": float(dev.max()) / scale,
                          "max_deviation_tension": float(dev[:m + 1].max()) / scale})
            loops.append((eps22.numpy(), sur.numpy(), ref.numpy()))
        curves.append((float(rate), loops))
    return {"cases": cases, "max_deviation": max(c["max_deviation"] for c in cases), "curves": curves}


def reference_material(dataset: Dict[str, Any]) -> Material:
    """The RVE that generated ``dataset`` (from its stored ``fe2nn generate`` config)."""
    from fe2nn.materials.registry import build_material

    where = dataset.get("path", "dataset")
    try:
        rve = json.loads(dataset.get("config") or "{}").get("rve")
    except (TypeError, ValueError):
        rve = None
    if not isinstance(rve, dict):
        raise UserError(f"{where}: no RVE configuration stored (attribute 'config' with an 'rve' table); "
                        "the uniaxial check needs a dataset written by fe2nn generate")
    try:  # errors name the stored table: "<dataset>: [rve] model 'rve': ..."
        return build_material({"model": "rve", **rve}, file=where, base_dir=Path(where).parent, key="rve")
    except UserError as err:
        raise UserError(str(err).replace(f"{where}: ", f"{where}: cannot rebuild the dataset's RVE: ", 1)) from None


def plot(path: Path, result: Dict[str, Any]) -> None:
    """sigma_22-eps_22 loops, one panel per rate: reference solid, surrogate dashed."""
    plt = pyplot()

    curves = result["curves"]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, (rate, loops) in zip(axes[0], curves):
        for eps, sur, ref in loops:
            line, = ax.plot(100 * eps, ref / 1e6, "-", lw=1.2)
            ax.plot(100 * eps, sur / 1e6, "--", color=line.get_color(), lw=1.2)
        ax.set_title(f"axial strain rate {rate:.2g} 1/s", fontsize=9)
        ax.set_xlabel("axial strain ε22 [%]")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("axial stress σ22 [MPa]")
    axes[0][0].plot([], [], "k-", label="RVE")
    axes[0][0].plot([], [], "k--", label="surrogate")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
