"""``fe2nn evaluate SURROGATE DATASET [--out DIR]``: errors of a surrogate against RVE data.

Groups of paths (accepted samples only):

* a training family (card ``dataset.train_families``) on the *same* dataset (sha256
  equal to the card's, or to one of its ``dataset.extra`` files trained on with it): its
  held-out **test split** only.  A dataset regenerated from the same config on another
  machine counts as the same (equal ``recipe_sha256``: same paths, RVE and accepted samples;
  its content hash differs because strains and stresses round differently in their last
  bits), and the report says so (``dataset_match`` = "recipe");
* a training family on another dataset: all its samples;
* every other family: all samples ("kept out of training").

Each group is evaluated at three step sizes:

* ``dt x 1``: the data's own increments;
* ``dt x 4``: the data coarsened to every 4th point (the data's RVE stresses there, which belong to
  the original path: the RVE answers the straighter coarsened path differently, see ``--rve-paths``);
* ``dt x 1/4``: the model runs on a 4x finer, linear-in-time interpolation of the
  strain path and is compared at the original points (no stress is interpolated).

Metric: relative L2 stress error per path, ||sigma_pred - sigma_RVE|| / ||sigma_RVE|| over
the whole trajectory; the table gives mean, 95th percentile and max over paths.
With ``--uniaxial``, also uniaxial-stress tension-unloading-compression cycles through the
surrogate and through the RVE that generated DATASET (:mod:`fe2nn.surrogate.uniaxial`): the
largest stress deviation along each loop, at three strain rates of the card's envelope.
At dt x 1 the report also says where along the paths the error sits (its mean over the
paths at each increment, relative to the path's RMS stress) and which share of it comes
from a wrong direction of the stress rather than a wrong magnitude (:func:`error_along_path`): an
error that grows along the path is drift of the internal variables.  It also says in which increments
the error grows: straight on, at turns and reversals of the strain path, or in holds
(:func:`error_growth`).
Every group also gets a stability probe (:func:`stability`): is the consistent tangent positive
definite when the step to the next data point is shortened (as Newton cut-backs do)?  With
``--rve-probe N`` the same probe runs through the dataset's RVE on N paths per group, and the
surrogate's consistent tangent along those paths is compared with the RVE's (:func:`tangent_errors`):
the stiffness the macro Newton solve and the structure's equilibrium see, which a stress error
along the path alone does not measure.
With ``--rve-paths N`` the dataset's RVE also runs along the first N paths of each group on the path
the surrogate ran at each step size, at that step and with sub-steps (:func:`same_path_errors`):
the surrogate's own dependence on the step, apart from the RVE's.
Writes ``report.json`` and PNG plots (predicted vs RVE stress-strain curves, step-size
comparison, error along the path) into DIR (default: SURROGATE/evaluation), all atomically.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from fe2nn.errors import UserError
from fe2nn.io_utils import pyplot, save_figure, write_text_atomic
from fe2nn.surrogate import uniaxial as U
from fe2nn.surrogate.rno import RNO, rollout_at_dt_factor

FACTORS = (0.25, 1.0, 4.0)
#: issue #5 targets
TARGETS = {"in_family_mean": 0.02, "out_of_family_mean": 0.05, "dt_ratio": 1.5}


def _fraction(key: str) -> str:
    f = float(key)
    return "1" if f == 1 else f"1/{round(1 / f)}"


def _label(f: float) -> str:
    return "dt x 1/4" if f == 0.25 else f"dt x {f:g}"


def predict(model: RNO, strain: np.ndarray, time: np.ndarray, factor: float, batch: int = 512):
    """(pred (B,T',6), target row indices (T',) into rows 1..T) at step size dt*factor."""
    preds, idx = [], None
    with torch.no_grad():
        for i in range(0, strain.shape[0], batch):
            s = torch.as_tensor(strain[i:i + batch], dtype=torch.float64)
            t = torch.as_tensor(time[i:i + batch], dtype=torch.float64)
            p, idx = rollout_at_dt_factor(model, s, t, factor)
            preds.append(p.numpy())
    return np.concatenate(preds), idx.numpy()


def path_errors(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    num = np.sqrt(((pred - target) ** 2).sum(axis=(1, 2)))
    return num / np.maximum(np.sqrt((target ** 2).sum(axis=(1, 2))), 1e-30)


def odd_symmetry(model: RNO, strain: np.ndarray, stress: np.ndarray, time: np.ndarray, pred: np.ndarray,
                 rve=None, n_rve: int = 0) -> Dict[str, Any]:
    """How far the surrogate is from odd in the strain path, at the data's step: its stress along the
    negated paths against the negated stress (relative L2 per path), and the error of its odd part
    (sigma(eps) - sigma(-eps)) / 2 against the data (what ``model.odd`` would give untrained).  With
    ``rve`` also the RVE's own asymmetry on the first ``n_rve`` paths: if it is zero, the material is
    odd and an odd surrogate (``[model] odd = true``) fits it better.  ``pred``: the surrogate's
    stress along the paths at the data's step (B, T, 6)."""
    neg, _ = predict(model, -strain, time, 1.0)
    target = stress[:, 1:]
    out = {"surrogate_asymmetry": stats(path_errors(-neg, pred)),
           "odd_part_error": stats(path_errors(0.5 * (pred - neg), target))}
    if rve is not None and n_rve > 0:
        from fe2nn.data.generate import simulate

        neg_rve = simulate(rve, -strain[:n_rve], time[:n_rve])["stress"]
        ok = np.isfinite(neg_rve).all(axis=(1, 2))  # (a path the RVE failed on is left out)
        out["rve_asymmetry"] = {"paths": int(ok.sum()),
                                **(stats(path_errors(-neg_rve[ok][:, 1:], target[:n_rve][ok])) if ok.any() else {})}
    return out


def _relative_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """e_n = |sigma_pred,n - sigma_n| / rms_m |sigma_m| per path (B, T), from pred, target (B, T, 6)."""
    rms = np.sqrt((target ** 2).sum(axis=2).mean(axis=1, keepdims=True))  # (B, 1)
    return np.linalg.norm(pred - target, axis=2) / np.maximum(rms, 1e-30)


def error_along_path(pred: np.ndarray, target: np.ndarray) -> Dict[str, Any]:
    """Where along the paths the error sits, and of which kind.

    pred, target (B, T, 6) [Pa].  e_n = |sigma_pred,n - sigma_n| / rms_m |sigma_m| per path
    (so that the path's relative L2 error is sqrt(mean_n e_n^2)); returns its mean over
    the paths at each increment ("mean_error", length T) and the share of the squared
    error that is perpendicular to the true stress ("direction_share": 0 = only the
    magnitude is wrong, 1 = only the direction), over all paths and increments.
    """
    diff = pred - target
    e = _relative_error(pred, target)
    unit = target / np.maximum(np.linalg.norm(target, axis=2, keepdims=True), 1e-30)
    along = (diff * unit).sum(axis=2)
    total = float((diff ** 2).sum())
    perp = total - float((along ** 2).sum())
    return {"mean_error": e.mean(axis=0).tolist(), "direction_share": perp / total if total > 0 else 0.0}


#: increments of a path by the turn of the strain path (:func:`error_growth`): the cosine between an
#: increment and the last one before it that moved, and a hold (an increment that does not move)
TURNS = (("straight", 0.95, 1.01), ("turn", 0.0, 0.95), ("reversal", -1.01, 0.0))
#: an increment shorter than this fraction of the median moving increment is a hold
HOLD_FRACTION = 1e-3


def error_growth(pred: np.ndarray, target: np.ndarray, strain: np.ndarray) -> Dict[str, Any]:
    """Which increments the error grows in: straight on, at turns, at reversals, in holds.

    pred, target (B, T, 6) [Pa] at the increments 1..T of the paths strain (B, T+1, 6).  With e_n
    as in :func:`error_along_path`, the growth of increment n >= 2 is e_n - e_{n-1}; the increments
    are grouped by the cosine between their strain increment and the last one before it that
    moved (:data:`TURNS`; the first moving increment of a path has none and counts as straight),
    or as holds (shorter than :data:`HOLD_FRACTION` of the median moving increment).  For each
    group: its share of the increments, the mean growth per increment and its share of the total
    growth (which is the mean of e_T - e_1 over the paths times their number)."""
    e = _relative_error(pred, target)  # (B, T)
    d = np.diff(strain, axis=1)  # (B, T, 6)
    n = np.linalg.norm(d, axis=2)
    moving_n = n[n > 0]
    hold = n <= HOLD_FRACTION * (np.median(moving_n) if moving_n.size else 0.0)
    T = n.shape[1]
    # index of the last moving increment up to and including each one (-1: none yet)
    last = np.maximum.accumulate(np.where(hold, -1, np.arange(T)[None, :]), axis=1)
    prev = np.concatenate([np.full((n.shape[0], 1), -1), last[:, :-1]], axis=1)  # ... before each one
    d_prev = np.take_along_axis(d, np.maximum(prev, 0)[..., None], axis=1)
    n_prev = np.take_along_axis(n, np.maximum(prev, 0), axis=1)
    cos = np.where(prev >= 0, (d * d_prev).sum(axis=2) / np.maximum(n * n_prev, 1e-300), 1.0)
    growth = np.diff(e, axis=1)  # increments 2..T
    total = float(growth.sum())
    hold, cos = hold[:, 1:], cos[:, 1:]
    kinds = {name: ~hold & (cos >= lo) & (cos < hi) for name, lo, hi in TURNS}
    kinds["hold"] = hold
    return {name: {"share_of_increments": float(m.mean()) if m.size else 0.0,
                   "mean_growth": float(growth[m].mean()) if m.any() else 0.0,
                   "share_of_growth": float(growth[m].sum()) / total if total != 0 else 0.0}
            for name, m in kinds.items()}


#: sub-steps per increment of the RVE's finer reference in :func:`same_path_errors`
RVE_SUBSTEPS = 4


def same_path_errors(rve, strain: np.ndarray, stress: np.ndarray, time: np.ndarray, preds: Dict[float, Any],
                     substeps: int = RVE_SUBSTEPS) -> Dict[str, Any]:
    """The surrogate at each step size against the RVE along the same strain path.

    At dt x m (m > 1) the surrogate runs on the path coarsened to every m-th point: a straighter path,
    which the RVE answers differently from the data; at dt x 1/m on a finer interpolation of the same
    path, where the RVE's own time integration answers differently. So the data are not the RVE's
    answer to what the surrogate was given. Here the RVE runs along that same path, at the same step
    ("rve_step": what a full-RVE solve at that step would give) and with ``substeps`` sub-steps per
    increment ("rve_fine": near the RVE's step-converged answer). ``preds``: {factor: (pred (B, T', 6),
    target rows)} of :func:`predict` for these B paths (strain, stress (B, T+1, 6) [-, Pa], time (B, T+1)
    [s]). Returns per step label: the relative L2 path errors (mean, p95, max) of the surrogate against
    the data, rve_step and rve_fine, and of rve_step and rve_fine against the data (the RVE's own change).
    Paths on which the RVE fails (NaN) are left out and counted.
    """
    from fe2nn.data.generate import simulate
    from fe2nn.surrogate.rno import path_at_dt_factor, refine_path

    out: Dict[str, Any] = {"paths": int(strain.shape[0]), "rve_substeps": substeps}
    for f, (pred, ti) in preds.items():
        ps, pt, rows, _ = (a.numpy() for a in path_at_dt_factor(torch.as_tensor(strain), torch.as_tensor(time), f))
        step = simulate(rve, ps, pt)["stress"][:, rows]
        fs, ft = refine_path(torch.as_tensor(ps), torch.as_tensor(pt), substeps)
        fine = simulate(rve, fs.numpy(), ft.numpy())["stress"][:, rows * substeps]
        data = stress[:, 1:][:, ti]
        ok = np.isfinite(step).all(axis=(1, 2)) & np.isfinite(fine).all(axis=(1, 2))
        res: Dict[str, Any] = {"rve_failed_paths": int((~ok).sum())}
        if ok.any():
            for key, (a, b) in {"surrogate_vs_data": (pred, data), "surrogate_vs_rve_step": (pred, step),
                                "surrogate_vs_rve_fine": (pred, fine), "rve_step_vs_data": (step, data),
                                "rve_fine_vs_data": (fine, data)}.items():
                res[key] = stats(path_errors(a[ok], b[ok]))
        out[_label(f)] = res
    return out


#: fractions of an increment (same strain rate) at which :func:`stability` probes the tangent: the
#: full increment and the shorter steps that Newton cut-backs take
PROBE_FRACTIONS = (1.0, 0.25, 1.0 / 16, 1.0 / 64)


def _probe_summary(lam: Dict[float, torch.Tensor]) -> Dict[str, Any]:
    """Per fraction f: smallest tangent eigenvalues lam[f] (B paths, T increments) [Pa] -> the share of
    increments and of paths where the tangent is not positive definite, and the smallest value."""
    return {f"{f:g}": {"non_pd_share": float((v <= 0).double().mean()),
                       "paths_with_non_pd": float((v <= 0).any(dim=1).double().mean()),
                       "min_eigenvalue": float(v.min())} for f, v in lam.items()}


def path_increments(model: RNO, strain, time, dtype: torch.dtype = torch.float64):
    """The increments of paths (B, T+1, 6) / (B, T+1) as (eps_{n-1}, eps_n, dt_n, xi_{n-1}), each
    flattened to B*T rows, xi from the model's own rollout (no gradient), in ``dtype``."""
    s = torch.as_tensor(strain, dtype=dtype)
    t = torch.as_tensor(time, dtype=dtype)
    B = s.shape[0]
    with torch.no_grad():
        _, xi = model.rollout(s, t, return_xi=True)
    xi_prev = torch.cat([xi.new_zeros(B, 1, model.n_state), xi[:, :-1]], dim=1).reshape(-1, model.n_state)
    return s[:, :-1].reshape(-1, 6), s[:, 1:].reshape(-1, 6), (t[:, 1:] - t[:, :-1]).reshape(-1), xi_prev


def _tangents_at(model: RNO, inc, f: float) -> torch.Tensor:
    """Consistent tangents (B*T, 6, 6) [Pa] of the steps over the fraction f of each increment."""
    e0, e1, dt, xi_prev = inc
    with torch.no_grad():
        return model.step_with_tangent(e0 + f * (e1 - e0), e0, f * dt, xi_prev)[1]


def _smallest_eigenvalue(C: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(0.5 * (C + C.transpose(-1, -2)))[..., 0]


def stability(model: RNO, strain: np.ndarray, time: np.ndarray, fractions=PROBE_FRACTIONS,
              batch: int = 16384) -> Dict[str, Any]:
    """Material stability of the surrogate along paths: is its tangent positive definite?

    From the model's own state after every increment n-1 of each path (strain (B, T+1, 6),
    time (B, T+1)), the step towards eps_n is taken over the fraction f of the increment (strain
    eps_{n-1} + f (eps_n - eps_{n-1}) after f dt_n: the same strain rate, a shorter step, as a
    cut-back takes), and the smallest eigenvalue of the symmetric part of the consistent tangent
    d sigma/d eps is computed.  A stable (hardening, rate-dependent) material such as the
    crystal-plasticity RVE keeps it positive; where it is <= 0 the material softens and the
    structure can localize (the macro Newton stalls there; see ``NewtonSolver.diagnose``).
    Returns, per fraction: the share of (path, increment) pairs with a tangent that is not
    positive definite, the share of paths with at least one, and the smallest eigenvalue [Pa].
    Tangents are formed ``batch`` increments at a time.
    """
    inc = path_increments(model, strain, time)
    B, T = strain.shape[0], strain.shape[1] - 1
    return _probe_summary({f: torch.cat([_smallest_eigenvalue(_tangents_at(model, [x[i:i + batch] for x in inc], f))
                                         for i in range(0, B * T, batch)]).reshape(B, T) for f in fractions})


def model_tangents(model: RNO, strain: np.ndarray, time: np.ndarray) -> torch.Tensor:
    """The surrogate's consistent tangents d sigma_n/d eps_n (B, T, 6, 6) [Pa] along paths (strain
    (B, T+1, 6), time (B, T+1)), each from the model's own state: what the macro Newton solve gets."""
    B, T = strain.shape[0], strain.shape[1] - 1
    return _tangents_at(model, path_increments(model, strain, time), 1.0).reshape(B, T, 6, 6)


def probe_material(material, strain: np.ndarray, time: np.ndarray, fractions=PROBE_FRACTIONS):
    """Drive any :class:`~fe2nn.materials.base.Material` (e.g. the dataset's RVE) along paths
    (strain (B, T+1, 6), time (B, T+1)).  Returns the smallest eigenvalues of the symmetric tangent
    {fraction: (B, T)} of the probe steps of :func:`stability`, each taken from the material's
    converged state before the increment, and the consistent tangents (B, T, 6, 6) [Pa] of the
    increments themselves.  B x T x (1 + fractions) batched updates of B points, so give it a few
    paths for an RVE."""
    s = torch.as_tensor(strain, dtype=torch.float64)
    t = torch.as_tensor(time, dtype=torch.float64)
    B, T1, _ = s.shape
    lam = {f: torch.empty(B, T1 - 1, dtype=torch.float64) for f in fractions}
    tangents = torch.empty(B, T1 - 1, 6, 6, dtype=torch.float64)
    state = material.initial_state(B)
    for n in range(1, T1):
        dt = t[:, n] - t[:, n - 1]
        for f in fractions:
            _, C, _ = material.update(s[:, n - 1] + f * (s[:, n] - s[:, n - 1]), f * dt, state)
            lam[f][:, n - 1] = _smallest_eigenvalue(C).cpu()
        _, C, state = material.update(s[:, n], dt, state)
        tangents[:, n - 1] = torch.as_tensor(C, dtype=torch.float64).cpu()
    return lam, tangents


def material_stability(material, strain: np.ndarray, time: np.ndarray, fractions=PROBE_FRACTIONS) -> Dict[str, Any]:
    """:func:`stability` for any :class:`~fe2nn.materials.base.Material`: the summary of
    :func:`probe_material`."""
    return _probe_summary(probe_material(material, strain, time, fractions)[0])


def tangent_errors(C: torch.Tensor, C_ref: torch.Tensor, strain: np.ndarray) -> Dict[str, Any]:
    """How far tangents C (B, T, 6, 6) are from reference tangents C_ref along the same paths
    (strain (B, T+1, 6)), per increment:

    * ``frobenius``: ||C - C_ref||_F / ||C_ref||_F, the whole tangent;
    * ``along_increment``: ||(C - C_ref) u|| / ||C_ref u||, u = the unit strain increment: the
      stress increment per unit strain along the path itself.

    Each as mean / p95 / max over the increments (``along_increment`` over those of nonzero
    length).  Mandel components throughout, so both norms are those of the tensors."""
    C, C_ref = torch.as_tensor(C, dtype=torch.float64), torch.as_tensor(C_ref, dtype=torch.float64)
    s = torch.as_tensor(strain, dtype=torch.float64)
    d = s[:, 1:] - s[:, :-1]
    length = torch.linalg.vector_norm(d, dim=-1)
    moving = length > 0
    u = d / torch.where(moving, length, 1.0)[..., None]
    fro = torch.linalg.matrix_norm(C - C_ref) / torch.linalg.matrix_norm(C_ref)
    ref_u = torch.einsum("btij,btj->bti", C_ref, u)
    along = torch.linalg.vector_norm(torch.einsum("btij,btj->bti", C - C_ref, u), dim=-1) \
        / torch.linalg.vector_norm(ref_u, dim=-1).clamp_min(1e-300)
    return {"frobenius": stats(fro.numpy().ravel()), "along_increment": stats(along[moving].numpy())}


def stats(e: np.ndarray) -> Dict[str, float]:
    return {"mean": float(e.mean()), "p95": float(np.percentile(e, 95)), "max": float(e.max()), "n": int(e.size)}


def _training_files(card: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The card's training dataset entries: the file and the extra files trained on with it."""
    info = card.get("dataset", {})
    return [info, *info.get("extra", [])]


def dataset_match(entry: Dict[str, Any], ds: Dict[str, Any]) -> str:
    """How the dataset ``ds`` (:func:`fe2nn.surrogate.train.read_dataset`) is the one a card's
    dataset ``entry`` names: "content" (the same arrays), "recipe" (regenerated from the same
    config: the same recipe hash, values differing in rounding) or "none"."""
    if entry.get("sha256") == ds["sha256"]:
        return "content"
    if ds.get("recipe_sha256") and entry.get("recipe_sha256") == ds["recipe_sha256"]:
        return "recipe"
    return "none"


def training_file(card: Dict[str, Any], ds: Dict[str, Any]):
    """(entry, match): the card's training dataset entry (the file or one of its extra files) that
    ``ds`` is, by :func:`dataset_match` (content first); (None, "none") for another dataset."""
    files = _training_files(card)
    for want in ("content", "recipe"):
        for d in files:
            if dataset_match(d, ds) == want:
                return d, want
    return None, "none"


def groups(card: Dict[str, Any], ds: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Evaluation groups: name -> {indices, kind ('held-out test split' | 'all samples' | 'kept out of training')}."""
    info = card.get("dataset", {})
    train_fams = list(info.get("train_families", []))
    # the training file, or one of the extra files trained on with it: its own test split
    match, _ = training_file(card, ds)
    same = match is not None
    test = set(match.get("split", {}).get("test", [])) if same else set()
    out = {}
    for code, name in enumerate(ds["family_names"]):
        idx = np.flatnonzero(ds["accepted"] & (ds["family"] == code))
        if idx.size == 0:
            continue
        if name in train_fams:
            if same:
                idx = np.array(sorted(test.intersection(idx.tolist())), dtype=np.int64)
                kind = "held-out test split"
            else:
                kind = "training family, other dataset (all samples)"
        else:
            kind = "kept out of training"
        if idx.size:
            out[name] = {"indices": idx, "kind": kind, "in_training_families": name in train_fams}
    return out


def _plot_group(path: Path, name: str, strain, stress, pred, idx, n_show: int = 3) -> None:
    plt = pyplot()

    from fe2nn import mandel

    n_show = min(n_show, strain.shape[0])
    fig, axes = plt.subplots(2, n_show, figsize=(4.0 * n_show, 6.4), squeeze=False)
    labels = ["11", "22", "33", "23", "13", "12"]
    t_s, t_e = stress[:, 1:][:, idx], strain[:, 1:][:, idx]
    for j in range(n_show):
        c = int(np.argmax(np.ptp(t_s[j], axis=0)))  # component with the largest stress range
        ax = axes[0, j]
        ax.plot(t_e[j, :, c] * 100, t_s[j, :, c] / 1e6, "k-", lw=1.5, label="RVE")
        ax.plot(t_e[j, :, c] * 100, pred[j, :, c] / 1e6, "r--", lw=1.2, label="RNO")
        ax.set_xlabel(f"strain {labels[c]} (Mandel) [%]")
        ax.set_ylabel(f"stress {labels[c]} (Mandel) [MPa]")
        ax.set_title(f"{name} #{j}")
        ax.legend(fontsize=8)
        ax = axes[1, j]
        vm_t = mandel.von_mises(torch.from_numpy(t_s[j])).numpy() / 1e6
        vm_p = mandel.von_mises(torch.from_numpy(pred[j])).numpy() / 1e6
        eq = mandel.equivalent_strain(torch.from_numpy(t_e[j])).numpy() * 100
        ax.plot(np.arange(len(vm_t)), vm_t, "k-", lw=1.5, label="RVE von Mises")
        ax.plot(np.arange(len(vm_p)), vm_p, "r--", lw=1.2, label="RNO von Mises")
        ax2 = ax.twinx()
        ax2.plot(np.arange(len(eq)), eq, color="0.6", lw=0.8)
        ax2.set_ylabel("equivalent strain [%]", color="0.5")
        ax.set_xlabel("increment")
        ax.set_ylabel("von Mises stress [MPa]")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _plot_dt(path: Path, name: str, strain, stress, preds: Dict[float, tuple]) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    c = int(np.argmax(np.ptp(stress[0], axis=0)))
    ax.plot(strain[0, :, c] * 100, stress[0, :, c] / 1e6, "k-", lw=2, label="RVE")
    for (f, (p, idx)), style in zip(preds.items(), ("b:", "r--", "g-.")):
        ax.plot(strain[0, 1:][idx, c] * 100, p[0, :, c] / 1e6, style, lw=1.2, label=f"RNO {_label(f)}")
    ax.set_xlabel(f"strain component {c + 1} (Mandel) [%]")
    ax.set_ylabel(f"stress component {c + 1} (Mandel) [MPa]")
    ax.set_title(f"step-size independence ({name} #0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _plot_along_path(path: Path, groups: Dict[str, Any]) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, g in groups.items():
        if "along_path" in g:
            e = np.asarray(g["along_path"]["mean_error"]) * 100
            ax.plot(np.arange(1, e.size + 1), e, lw=1.4,
                    label=f"{name} ({g['along_path']['direction_share']:.0%} from direction)")
    ax.set_xlabel("increment")
    ax.set_ylabel("|stress error| / RMS stress of the path [%]")
    ax.set_title("error along the path (dt x 1, mean over paths)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def evaluate(surrogate: str, dataset: str, out: Optional[str] = None, factors=FACTORS,
             plots: bool = True, uniaxial: bool = False, rve_probe: int = 0, rve_paths: int = 0,
             overwrite: bool = False) -> Dict[str, Any]:
    """Evaluate and write the report/plots; returns the report dict.  ``uniaxial``: also the
    uniaxial-stress cycles against the dataset's RVE (:mod:`fe2nn.surrogate.uniaxial`).
    ``rve_probe`` > 0: also the stability probe of the dataset's RVE on that many paths of each
    group (the first ones; :func:`probe_material`), and the surrogate's tangent against the RVE's
    there (:func:`tangent_errors`).  ``rve_paths`` > 0: also, on that many paths of each group (the
    first ones), the errors at every step size against the RVE run along the same path
    (:func:`same_path_errors`).

    ``out`` None: ``SURROGATE/evaluation``, which holds a surrogate's own (shipped) evaluation: a
    report there of the same weights is replaced by one on another dataset, or without checks
    it has, only with ``overwrite`` (:func:`_would_lose`).  Files that the previous
    report in the output directory listed and this one does not write (plots of groups or
    checks it no longer has) are removed, so the directory never mixes two evaluations."""
    from fe2nn.surrogate.card import card_paths, load_surrogate
    from fe2nn.surrogate.train import read_dataset

    model, card = load_surrogate(surrogate)
    out_dir = Path(out) if out else card_paths(surrogate)[0] / "evaluation"
    ds = read_dataset(dataset)
    options = {"plots": bool(plots), "uniaxial": bool(uniaxial), "rve_probe": int(rve_probe), "rve_paths": int(rve_paths)}
    old = _read_report(out_dir / "report.json")
    if out is None and not overwrite:
        lost = _would_lose(old, card, ds, options)
        if lost:
            raise UserError(f"{out_dir / 'report.json'}: this run would replace the surrogate's own evaluation "
                            f"({lost}): pass --out DIR to write it elsewhere, or --overwrite")
    previous = _listed_files(old)
    grp = groups(card, ds)
    if not grp:
        raise UserError(f"{dataset}: no accepted samples to evaluate")
    if uniaxial:  # input errors before any work: surrogate as a material, the dataset's RVE, rates
        from fe2nn.materials.registry import build_material

        uniaxial_setup = (build_material({"model": "rno", "surrogate": str(Path(surrogate).resolve())},
                                         file=str(surrogate)), U.reference_material(ds), U.envelope_rates(card))
    rve = U.reference_material(ds) if rve_probe > 0 or rve_paths > 0 else None
    match = training_file(card, ds)[1]
    report: Dict[str, Any] = {"surrogate": str(surrogate), "weights_sha256": card.get("weights_sha256"),
                              "options": options, "dataset": str(dataset), "dataset_sha256": ds["sha256"],
                              "dataset_recipe_sha256": ds.get("recipe_sha256"),
                              "same_dataset_as_training": match != "none", "dataset_match": match,
                              "metric": "relative L2 stress error per path over the whole trajectory",
                              "dt_factors": {_label(f): f for f in factors}, "groups": {}, "plots": []}
    for name, g in grp.items():
        idx = g["indices"]
        s, sig, t = ds["strain"][idx], ds["stress"][idx], ds["time"][idx]
        res: Dict[str, Any] = {"kind": g["kind"], "n_paths": int(idx.size), "errors": {}}
        preds = {}
        for f in factors:
            p, ti = predict(model, s, t, f)
            preds[f] = (p, ti)
            res["errors"][_label(f)] = stats(path_errors(p, sig[:, 1:][:, ti]))
        if 1.0 in preds:
            p, ti = preds[1.0]
            res["along_path"] = error_along_path(p, sig[:, 1:][:, ti])
            res["along_path"]["growth"] = error_growth(p, sig[:, 1:][:, ti], s)
            res["odd_symmetry"] = odd_symmetry(model, s, sig, t, p, rve, min(rve_probe, idx.size))
        res["stability"] = stability(model, s, t)
        if rve_paths > 0:
            n = min(rve_paths, idx.size)
            res["same_path"] = same_path_errors(rve, s[:n], sig[:n], t[:n], {f: (p[:n], ti) for f, (p, ti) in preds.items()})
        if rve_probe > 0:
            n = min(rve_probe, idx.size)
            lam, C_rve = probe_material(rve, s[:n], t[:n])
            res["rve_stability"] = {"paths": n, **_probe_summary(lam)}
            res["rve_tangent"] = {"paths": n, **tangent_errors(model_tangents(model, s[:n], t[:n]), C_rve, s[:n])}
        report["groups"][name] = res
        if plots:
            safe = name.replace("/", "_").replace(" ", "_")
            p1 = out_dir / f"{safe}_stress_strain.png"
            _plot_group(p1, f"{name} ({g['kind']})", s, sig, preds[1.0][0] if 1.0 in preds else preds[factors[0]][0],
                        preds[1.0][1] if 1.0 in preds else preds[factors[0]][1])
            p2 = out_dir / f"{safe}_dt.png"
            _plot_dt(p2, name, s, sig, {f: (preds[f][0][:1], preds[f][1]) for f in factors})
            report["plots"] += [p1.name, p2.name]
    if plots and any("along_path" in g for g in report["groups"].values()):
        p3 = out_dir / "error_along_path.png"
        _plot_along_path(p3, report["groups"])
        report["plots"].append(p3.name)
    if uniaxial:
        report["uniaxial"] = _uniaxial(*uniaxial_setup, out_dir, plots)
    report["targets"] = _check_targets(report)
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    for name in previous - _listed_files(report):
        (out_dir / name).unlink(missing_ok=True)
    return report


def _read_report(path: Path) -> Dict[str, Any]:
    """An existing evaluation report ({} if there is none or it cannot be read)."""
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return rep if isinstance(rep, dict) else {}


def _would_lose(old: Dict[str, Any], card: Dict[str, Any], ds: Dict[str, Any], options: Dict[str, Any]) -> str:
    """What replacing the report ``old`` (:func:`_read_report`) by this run would lose ('' =
    nothing): the evaluation of the same weights (reports that do not record them count as the
    same) on another dataset, or checks it has that this run does not make.  Rerunning the command
    that made it, or evaluating retrained weights, loses nothing."""
    if not old or old.get("weights_sha256") not in (None, card.get("weights_sha256")):
        return ""
    same_data = old.get("dataset_sha256") == ds["sha256"] or (
        old.get("dataset_recipe_sha256") is not None and old.get("dataset_recipe_sha256") == ds.get("recipe_sha256"))
    if not same_data:
        return f"made on {Path(str(old.get('dataset', '?'))).name}"
    groups_ = [g for g in (old.get("groups") or {}).values() if isinstance(g, dict)]
    had = {"--uniaxial": "uniaxial" in old and not options["uniaxial"],
           "--rve-probe": any("rve_tangent" in g for g in groups_) and options["rve_probe"] == 0,
           "--rve-paths": any("same_path" in g for g in groups_) and options["rve_paths"] == 0,
           "plots": bool(old.get("plots")) and not options["plots"]}
    lost = [k for k, v in had.items() if v]
    return f"with {', '.join(lost)}, which this run leaves out" if lost else ""


def _listed_files(rep: Dict[str, Any]) -> set:
    """Names of the files (plots) that an evaluation report lists beside it."""
    names = list(rep.get("plots") or [])
    uni = rep.get("uniaxial")
    if isinstance(uni, dict) and uni.get("plot"):
        names.append(uni["plot"])
    # plain names only: a report never lists a path outside its directory
    return {n for n in names if isinstance(n, str) and n and Path(n).name == n and n not in (".", "..")}


def _uniaxial(surrogate, reference, rates, out_dir: Path, plots: bool):
    """Uniaxial-stress tension-unloading-compression cycles, surrogate vs the dataset's RVE (materials)."""
    res = U.compare(surrogate, reference, rates)
    out = {"definition": "largest |sigma22 surrogate - sigma22 RVE| / largest |sigma22 RVE| along a uniaxial-stress "
                         "cycle 0 -> +a -> 0 -> -a (three branches of equal time, "
                         f"{U.STEPS_PER_BRANCH} increments each); 'tension': first branch only",
           "cases": res["cases"], "max_deviation": res["max_deviation"]}
    if plots:
        U.plot(out_dir / "uniaxial_stress.png", res)
        out["plot"] = "uniaxial_stress.png"
    return out


def _check_targets(report: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for name, g in report["groups"].items():
        e = g["errors"]
        if "dt x 1" not in e:
            continue
        base = e["dt x 1"]["mean"]
        lim = TARGETS["in_family_mean"] if g["kind"] == "held-out test split" else TARGETS["out_of_family_mean"]
        out[f"{name}: mean at dt x 1 <= {lim:.0%}"] = bool(base <= lim)
        for lab in ("dt x 1/4", "dt x 4"):
            if lab in e:
                out[f"{name}: mean at {lab} <= {TARGETS['dt_ratio']} x mean at dt x 1"] = bool(
                    e[lab]["mean"] <= TARGETS["dt_ratio"] * base)
    return out


def format_table(report: Dict[str, Any]) -> str:
    lines = [f"{'group':<14} {'paths':>5} {'kind':<28} {'step':<9} {'mean':>8} {'p95':>8} {'max':>8}"]
    if report.get("dataset_match") == "recipe":
        lines.insert(0, "dataset: the training data regenerated from the same config (same paths, RVE and accepted "
                        "samples; its values differ from the original's in rounding only), so its test split is held out")
    for name, g in report["groups"].items():
        for lab, st in g["errors"].items():
            lines.append(f"{name:<14} {g['n_paths']:>5} {g['kind'][:28]:<28} {lab:<9} "
                         f"{st['mean']:>8.3%} {st['p95']:>8.3%} {st['max']:>8.3%}")
    for name, g in report["groups"].items():
        if "along_path" in g:
            e = g["along_path"]["mean_error"]
            at = "/".join(f"{e[max(round(q * len(e)) - 1, 0)]:.2%}" for q in (0.25, 0.5, 1.0))
            lines.append(f"{name}: error at 1/4, 1/2 and the end of the path {at} (dt x 1; |error| / RMS stress), "
                         f"{g['along_path']['direction_share']:.0%} of its square from a wrong stress direction, the rest "
                         "from a wrong magnitude")
            if "growth" in g["along_path"]:
                lines.append(f"{name}: the error grows " + ", ".join(
                    f"{v['share_of_growth']:.0%} {k if k != 'hold' else 'in holds'} ({v['share_of_increments']:.1%} of the "
                    f"increments, {v['mean_growth']:+.3%} each)" for k, v in g["along_path"]["growth"].items()
                    if v["share_of_increments"] > 0) + " (straight: within 18 deg of the last strain increment; turn: "
                    "18-90 deg; reversal: beyond)")
    for name, g in report["groups"].items():
        if "odd_symmetry" in g:
            o = g["odd_symmetry"]
            rve = o.get("rve_asymmetry", {})
            lines.append(f"{name}: odd symmetry (dt x 1): the surrogate's stress along the negated paths is "
                         f"{o['surrogate_asymmetry']['mean']:.2%} from the negated stress; its odd part alone "
                         f"{o['odd_part_error']['mean']:.2%} from the data"
                         + (f"; the RVE's on {rve['paths']} paths {rve['mean']:.2e}" if "mean" in rve else "")
                         + (" (the material is odd: [model] odd = true gives the surrogate the same symmetry)" if "mean" in rve
                            and rve["max"] < 1e-6 and o["surrogate_asymmetry"]["mean"] > 1e-6 else ""))
    for name, g in report["groups"].items():
        if "same_path" in g:
            sp = g["same_path"]
            cells = [f"{lab} {v['surrogate_vs_rve_fine']['mean']:.2%} (data {v['surrogate_vs_data']['mean']:.2%}; "
                     f"the RVE's own change {v['rve_fine_vs_data']['mean']:.2%})" if "surrogate_vs_data" in v
                     else f"{lab}: the RVE failed on every path" for lab, v in sp.items() if isinstance(v, dict)]
            lines.append(f"{name}: against the RVE along the path the surrogate ran, {sp['rve_substeps']} sub-steps per "
                         f"increment, on {sp['paths']} paths: " + ", ".join(cells))
    for name, g in report["groups"].items():
        if "stability" in g:
            st = g["stability"]
            worst = min(v["min_eigenvalue"] for v in st.values())
            lines.append(f"{name}: tangent not positive definite at " + " / ".join(
                f"{v['non_pd_share']:.2%}" for v in st.values()) + " of the increments taken over "
                + " / ".join(_fraction(f) for f in st) + f" of their length (smallest eigenvalue {worst / 1e9:.3g} GPa)")
        if "rve_stability" in g:
            st = {f: v for f, v in g["rve_stability"].items() if f != "paths"}
            lines.append(f"{name}: the RVE's tangent on {g['rve_stability']['paths']} paths: not positive definite at "
                         + " / ".join(f"{v['non_pd_share']:.2%}" for v in st.values()) + " (smallest eigenvalue "
                         + " / ".join(f"{v['min_eigenvalue'] / 1e9:.3g}" for v in st.values()) + " GPa)")
        if "rve_tangent" in g:
            e = g["rve_tangent"]
            lines.append(f"{name}: consistent tangent against the RVE's on {e['paths']} paths: "
                         f"{e['frobenius']['mean']:.1%} (p95 {e['frobenius']['p95']:.1%}; Frobenius), "
                         f"{e['along_increment']['mean']:.1%} (p95 {e['along_increment']['p95']:.1%}) along the "
                         "increment")
    for c in report.get("uniaxial", {}).get("cases", []):
        lines.append(f"uniaxial stress cycle a = {c['amplitude']:.2%} at {c['rate']:.2g} 1/s: largest deviation "
                     f"{c['max_deviation']:.2%} (tension branch {c['max_deviation_tension']:.2%})")
    lines.append("targets: " + ", ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in report["targets"].items()))
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = _Parser(prog="fe2nn evaluate", description="Evaluate a surrogate against an RVE dataset.")
    ap.add_argument("surrogate", help="surrogate directory (card.json + weights.safetensors) or its card.json")
    ap.add_argument("dataset", help="HDF5 dataset (README 'Dataset format')")
    ap.add_argument("--out", default=None, help="output directory (default SURROGATE/evaluation, the surrogate's own "
                                                "evaluation: see --overwrite)")
    ap.add_argument("--overwrite", action="store_true",
                    help="without --out: replace SURROGATE/evaluation/report.json also when it is an evaluation of "
                         "these weights on another dataset, or has checks (--uniaxial, --rve-probe, --rve-paths, "
                         "plots) that this run leaves out; otherwise that is refused")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--uniaxial", action="store_true",
                    help="also run uniaxial-stress tension-unloading-compression cycles through the surrogate and "
                         "through the dataset's RVE (the validation demo's load path at one point; ~1 min for Taylor)")
    ap.add_argument("--rve-probe", type=int, default=0, metavar="N",
                    help="also run the stability probe through the dataset's RVE on the first N paths of each group, "
                         "and compare the surrogate's consistent tangent with the RVE's along them")
    ap.add_argument("--rve-paths", type=int, default=0, metavar="N",
                    help="also run the dataset's RVE along the first N paths of each group at every step size, on "
                         "the path the surrogate ran (coarsened or refined), and compare the surrogate with it")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args(argv)
    for key, v in (("--rve-probe", args.rve_probe), ("--rve-paths", args.rve_paths), ("--threads", args.threads)):
        if v < 0:
            raise UserError(f"fe2nn evaluate: {key} must be >= 0, got {v}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = evaluate(args.surrogate, args.dataset, args.out, plots=not args.no_plots, uniaxial=args.uniaxial,
                      rve_probe=args.rve_probe, rve_paths=args.rve_paths, overwrite=args.overwrite)
    print(format_table(report))
    from fe2nn.surrogate.card import card_paths

    out_dir = Path(args.out) if args.out else card_paths(args.surrogate)[0] / "evaluation"
    print(f"report: {out_dir / 'report.json'}")
    return 0
