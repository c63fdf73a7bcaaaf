"""``fe2nn train CONFIG [--resume] [--sweep-k 0,1,2,4] [--stop-after N]``: train an RNO.

Data: the accepted samples of an HDF5 dataset (README "Dataset format"), optionally with
more datasets of the same RVE and path length (``data.extra_paths``).  Samples of the
families in ``data.train_families`` are split by sample (seeded) into train / validation /
test, each file on its own, so that adding a file never moves a sample of another file
between the parts; the other families are never seen in training (kept for evaluation of
out-of-family generalisation).

Loss: mean over paths of the relative L2 stress error over the whole trajectory, plus
(``training.increment_weight`` > 0) that weight times the relative L2 error of the stress
increments, which weighs changes of stiffness (yield, reverse yield).
Adam with a cosine (or plateau) learning-rate schedule, early stopping on the
validation error (the best weights are exported), checkpoints every few epochs and
on exit; ``--resume`` continues from the checkpoint exactly (model, optimizer,
schedule, random generator).

Time-step augmentation (``training.dt_factors``): each mini-batch is run at one step
size, drawn from the list:

* factor m >= 2 (integer): the path is coarsened to every m-th point -- the stress
  targets there are the RVE values of the original path (the RVE on the coarsened,
  straighter path would answer differently, so part of that error is not learnable);
* factor 1/m: the strain path is refined by linear interpolation in time (m sub-steps
  per increment) and the loss uses the original points only.  No stress target is
  ever interpolated: between data points the RVE response is unknown (re-running
  the RVE would be needed), but the recurrence must still reproduce the RVE stress
  at the data points when it takes smaller steps, which is what makes it step-size
  independent.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time as _time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fe2nn import interrupt
from fe2nn.config import add_override_argument, load_toml, non_negative, one_of, parse, positive, resolve_path
from fe2nn.errors import UserError
from fe2nn.io_utils import atomic_path, time_left, write_text_atomic
from fe2nn.surrogate.rno import (RNO, ACTIVATIONS, RNOArch, grow, relative_l2, rollout_at_dt_factor, shrink,
                                 symmetrized)

#: paths of each batch on which the rate-stability term (training.rate_stability_weight) is evaluated
RATE_STABILITY_PATHS = 32

# -- dataset reading -----------------------------------------------------------------------
def read_dataset(path: str | Path) -> Dict[str, Any]:
    """Read an fe2nn HDF5 dataset (validated by :func:`fe2nn.data.dataset.read_arrays`).

    Returns numpy arrays strain (N,T+1,6), stress (N,T+1,6), time (N,T+1), accepted (N,)
    bool, family (N,) int, plus family_names (list of str), sha256 (content hash of the
    data arrays, :func:`fe2nn.data.dataset.array_checksum`), recipe_sha256 (what they were made
    from, :func:`fe2nn.data.dataset.recipe_checksum`; equal for the same config regenerated on
    another machine, None for files without the attributes), path and config (the generating
    ``fe2nn generate`` config as JSON text, None when absent).  Problems raise a
    UserError naming the file.
    """
    from fe2nn.data.dataset import array_checksum, decode_attrs, read_arrays, recipe_checksum, rve_identity

    p = Path(path)
    arrays, attrs = read_arrays(p)
    decoded = decode_attrs(attrs)
    names = list(attrs.get("family_names") or [])
    t = arrays["time"].astype(np.float64)
    acc = arrays["accepted"].astype(bool)
    if acc.any() and not np.all(np.diff(t[acc], axis=1) > 0):
        raise UserError(f"{p}: time must increase strictly along every accepted path")
    fam = arrays["family"].astype(np.int64)
    if fam.size and (fam.min() < 0 or fam.max() >= len(names)):
        raise UserError(f"{p}: family codes outside the {len(names)} names in family_names")
    return {"strain": arrays["strain"].astype(np.float64), "stress": arrays["stress"].astype(np.float64),
            "time": t, "accepted": acc, "family": fam, "family_names": names,
            "sha256": array_checksum(arrays), "recipe_sha256": recipe_checksum(arrays, decoded), "path": str(p),
            "config": attrs.get("config"), "rve": rve_identity(decoded)}


def combine_datasets(parts: List[Dict[str, Any]], families: List[str], where: str) -> Dict[str, Any]:
    """Datasets of the same RVE and number of increments as one (samples concatenated in order).

    Family codes are renumbered onto the union of the family names (the first file's order
    first).  The result has the keys of :func:`read_dataset` (``sha256``, ``recipe_sha256``, ``path``
    and ``config`` of the first file) plus ``parts``: per file its path, both hashes, family names and
    sample offset.  An extra file of another RVE, another number of increments, or without
    any sample of ``families`` is a UserError naming it and ``where``.
    """
    first = parts[0]
    names = list(first["family_names"])
    T = first["strain"].shape[1]
    for d in parts[1:]:
        names += [n for n in d["family_names"] if n not in names]
        if d["strain"].shape[1] != T:
            raise UserError(f"{where}: {d['path']} has {d['strain'].shape[1] - 1} increments per path, "
                            f"{first['path']} has {T - 1}; datasets trained on together need the same number")
        for key, value in first["rve"].items():  # datasets trained on together: the same RVE
            if d["rve"].get(key) != value:
                raise UserError(f"{where}: {d['path']} was made with another RVE {key} than {first['path']} "
                                f"({json.dumps(d['rve'].get(key), sort_keys=True)} vs "
                                f"{json.dumps(value, sort_keys=True)})")
        if not any(f in d["family_names"] for f in families):
            raise UserError(f"{where}: {d['path']} has no samples of the training families {families} "
                            f"(it has: {', '.join(d['family_names'])})")
    offsets = np.cumsum([0] + [d["strain"].shape[0] for d in parts[:-1]]).tolist()
    if len(parts) == 1:
        return {**first, "parts": [_part(first, 0)]}
    out = dict(first)
    for key in ("strain", "stress", "time", "accepted"):
        out[key] = np.concatenate([d[key] for d in parts])
    out["family"] = np.concatenate([np.array([names.index(n) for n in d["family_names"]], dtype=np.int64)[d["family"]]
                                    if d["family"].size else d["family"] for d in parts])
    out["family_names"] = names
    out["parts"] = [_part(d, o) for d, o in zip(parts, offsets)]
    return out


def _part(d: Dict[str, Any], offset: int) -> Dict[str, Any]:
    return {"path": d["path"], "sha256": d["sha256"], "recipe_sha256": d.get("recipe_sha256"),
            "family_names": list(d["family_names"]),
            "offset": offset, "n": int(d["strain"].shape[0])}


def split_parts(ds: Dict[str, Any], families: List[str], fractions, seed: int, max_samples: int = 0,
                where: str = "data.train_families") -> Dict[str, List[int]]:
    """Train/val/test indices into the combined ``ds`` (:func:`combine_datasets`), each file
    split on its own (seeded); each file's own split (its sample indices) is stored as
    ``ds["parts"][i]["split"]``.  ``max_samples`` > 0 keeps that many (seeded) samples per file.
    """
    whole: Dict[str, List[int]] = {"train": [], "val": [], "test": []}
    idx_all = family_indices(ds, families, where)
    for part in ds["parts"]:
        lo, hi = part["offset"], part["offset"] + part["n"]
        idx = idx_all[(idx_all >= lo) & (idx_all < hi)] - lo
        if max_samples:
            idx = np.sort(idx[np.random.default_rng(seed).permutation(len(idx))[:max_samples]])
        part["split"] = split_samples(idx, fractions, seed)
        for key in whole:
            whole[key] += [i + lo for i in part["split"][key]]
    return whole


def family_indices(ds: Dict[str, Any], families: List[str], where: str) -> np.ndarray:
    """Indices of accepted samples whose family name is in ``families``."""
    names = ds["family_names"]
    unknown = [f for f in families if f not in names]
    if unknown:
        raise UserError(f"{where}: unknown path family {unknown[0]!r} (dataset has: {', '.join(names)})")
    codes = [names.index(f) for f in families]
    return np.flatnonzero(ds["accepted"] & np.isin(ds["family"], codes))


def split_samples(indices: np.ndarray, fractions, seed: int) -> Dict[str, List[int]]:
    """Seeded split by sample into train/val/test index lists."""
    rng = np.random.default_rng(seed)
    perm = indices[rng.permutation(len(indices))]
    n = len(perm)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    n_train = n - n_val - n_test
    return {"train": sorted(perm[:n_train].tolist()), "val": sorted(perm[n_train:n_train + n_val].tolist()),
            "test": sorted(perm[n_train + n_val:].tolist())}


# -- configuration -------------------------------------------------------------------------
def _split_check(v):
    if len(v) != 3 or any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-9 or v[0] <= 0:
        return "must be three fractions [train, val, test] >= 0 summing to 1 (train > 0)"
    return None


def _factors_check(v):
    for f in v:
        if f <= 0:
            return "must be > 0"
        m = f if f >= 1 else 1.0 / f
        if abs(m - round(m)) > 1e-9:
            return "must be integers m or their inverses 1/m (e.g. [0.5, 1, 2, 4])"
    return None if v else "must not be empty"


@dataclass
class DataConfig:
    path: str = field(metadata=dict(doc="HDF5 dataset written by fe2nn generate"))
    extra_paths: List[str] = field(default_factory=list, metadata=dict(
        doc="more datasets of the same RVE and number of increments, trained on together with path; "
            "each file is split on its own (same seed and fractions)"))
    train_families: List[str] = field(default_factory=lambda: ["random_walk"],
                                      metadata=dict(doc="families used for train/val/test"))
    split: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1], metadata=dict(check=_split_check))
    seed: int = field(default=0, metadata=dict(doc="seed of the sample split"))
    max_samples: int = field(default=0, metadata=dict(check=non_negative, doc="0 = all"))


def _arch_line(a: RNOArch) -> str:
    """k, F and G's widths, residual blocks and G's trial-stress input, for a log line."""
    blocks = f" + {a.f_blocks}/{a.g_blocks} residual blocks" if a.f_blocks or a.g_blocks else ""
    return f"k = {a.k}, F {a.f_hidden}, G {a.g_hidden}{blocks}{' (G sees the trial stress)' if a.g_trial else ''}"


@dataclass
class ModelConfig:
    k: int = field(default=2, metadata=dict(check=non_negative, doc="number of internal variables"))
    f_hidden: List[int] = field(default_factory=lambda: [128, 128])
    g_hidden: List[int] = field(default_factory=lambda: [64, 64])
    activation: str = field(default="silu", metadata=dict(check=one_of(*ACTIVATIONS)))
    g_rate: bool = field(default=False, metadata=dict(doc="feed the strain rate to G as well (not in the paper)"))
    xi_bound: float = field(default=0.0, metadata=dict(check=non_negative,
                                                       doc="MLPs see B tanh(xi/B); 0 = off"))
    g_increment: bool = field(default=False, metadata=dict(
        doc="G = A + B q, affine in the strain rate q: xi increments follow strain increments (replaces g_rate)"))
    elastic_split: bool = field(default=False, metadata=dict(
        doc="sigma = C_el (eps - xi[:6]) + F(...): the first 6 internal variables act as plastic strain (k >= 6)"))
    odd: bool = field(default=False, metadata=dict(
        doc="odd in the strain path, sigma(-eps) = -sigma(eps) exactly (materials without a preferred sign of "
            "loading, e.g. crystal plasticity); twice the cost"))
    f_blocks: int = field(default=0, metadata=dict(check=non_negative, doc=(
        "residual blocks after F's last hidden layer (depth at its width); training.init_from a model with "
        "fewer adds them with zero outputs (the same function at the start)")))
    g_blocks: int = field(default=0, metadata=dict(check=non_negative, doc="the same for G"))
    g_trial: bool = field(default=False, metadata=dict(doc=(
        "G also sees the trial stress F(eps_n, rate_n, xi_{n-1}) (the elastic predictor; one more F per step); "
        "training.init_from a model without it starts with zero weights on it (the same function)")))

    def arch(self) -> RNOArch:
        """The model architecture these keys describe."""
        return RNOArch(**{f.name: copy.copy(getattr(self, f.name)) for f in fields(RNOArch) if hasattr(self, f.name)})

    def validate(self):
        if not self.f_hidden:
            raise ValueError("f_hidden must not be empty")
        self.arch().validate()  # the architecture's own checks (k, widths, option combinations)


@dataclass
class TrainingConfig:
    epochs: int = field(default=500, metadata=dict(check=positive))
    batch_size: int = field(default=32, metadata=dict(check=non_negative, doc="paths per batch, 0 = all"))
    lr: float = field(default=3e-3, metadata=dict(check=positive))
    lr_min: float = field(default=1e-5, metadata=dict(check=non_negative))
    schedule: str = field(default="cosine", metadata=dict(check=one_of("cosine", "plateau", "constant")))
    weight_decay: float = field(default=0.0, metadata=dict(check=non_negative))
    grad_clip: float = field(default=1.0, metadata=dict(check=non_negative, doc="0 = off"))
    patience: int = field(default=100, metadata=dict(check=positive, doc="epochs without validation improvement"))
    dt_factors: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0],
                                    metadata=dict(check=_factors_check))
    seed: int = 0
    dtype: str = field(default="float64", metadata=dict(
        check=one_of("float64", "float32"), doc="training precision (the exported weights are float64)"))
    threads: int = field(default=1, metadata=dict(check=non_negative, doc="torch threads, 0 = torch default"))
    device: str = field(default="auto", metadata=dict(check=one_of("auto", "cpu", "cuda")))
    cuda_graphs: bool = field(default=True, metadata=dict(doc=(
        "on a CUDA device, record each full batch's forward and backward pass once per step-size factor as a "
        "CUDA graph and replay it: the same kernels with one launch instead of tens of thousands, so a batch "
        "costs its arithmetic instead of its launch latency.  Used where the model trains without sub-steps "
        "(not fine-tuned from a sub-stepped surrogate) and without the rate-stability term; elsewhere, and on "
        "a CPU, batches run eagerly")))
    checkpoint_every: int = field(default=10, metadata=dict(check=positive))
    time_limit: float = field(default=0.0, metadata=dict(check=non_negative,
                                                          doc="stop and export the best model after this many "
                                                              "seconds of this run, 0 = none"))
    sweep_k: List[int] = field(default_factory=list, metadata=dict(doc="train one model per k and compare"))
    max_substep_strain: float = field(default=-1.0, metadata=dict(
        check=lambda v: None if v == -1 or v >= 0 else "must be -1 (auto) or >= 0",
        doc="exported integration setting: strain increments (Mandel norm) above it are split into equal "
            "sub-steps of about this length when the surrogate is used; -1 = the one the model trained with "
            "(training.init_from's surrogate, which trains with its sub-steps), else the largest increment of "
            "the training paths; 0 = never"))
    increment_weight: float = field(default=0.0, metadata=dict(check=non_negative, doc=(
        "weight w of the stress-increment term: loss = relative L2 of the stress + w x relative L2 of the "
        "stress increments (per path); the increments weigh changes of stiffness (yield, reverse yield)")))
    rate_stability_weight: float = field(default=0.0, metadata=dict(check=non_negative, doc=(
        "weight w of the rate-stability term: loss += w x mean over the points of the paths (up to 32 paths per "
        "batch, at the data's step size) of max(0, m - smallest eigenvalue of sym(A)), A = RNO.rate_tangent, the "
        "part of the tangent that grows as 1/dt; keeps the tangent positive definite at short steps (cut-backs; "
        "fe2nn evaluate's stability probe).  The best epoch then minimizes the validation error + w x the same "
        "term on the validation paths")))
    rate_stability_margin: float = field(default=0.0, metadata=dict(check=non_negative, doc=(
        "m of rate_stability_weight (normalized units: stress scale / rate scale)")))
    selection_margin: float = field(default=0.0, metadata=dict(
        check=lambda v: None if v == -1 or v >= 0 else "must be -1 (the rate-stability margin) or >= 0",
        doc="margin of the rate-stability term in the best-epoch score (validation error + w x the term on the "
            "validation paths): 0 counts only tangents that are not positive definite, so that among the epochs "
            "without such points the lowest validation error wins; -1 = rate_stability_margin (the default "
            "before 2026-11-27: the term's noise between epochs then outweighs the validation error's)"))
    init_from: str = field(default="", metadata=dict(
        doc="surrogate directory to start from (fine-tuning; its normalization is kept); a [model] with larger k "
            "or hidden widths grows it (rno.grow: the same function at the start), one with narrower hidden layers "
            "cuts it (rno.shrink: pruned and fitted along training paths, a cheaper model to train on)"))


@dataclass
class OutputConfig:
    dir: str = field(metadata=dict(doc="output directory: card.json, weights.safetensors, checkpoint, history"))


@dataclass
class TrainConfig:
    data: DataConfig
    output: OutputConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Parse a training config, paths resolved; ``overrides``: ``KEY=VALUE`` strings (``--set``)."""
    cfg = parse(TrainConfig, load_toml(path, overrides), str(path))
    cfg.data.path = str(resolve_path(path, cfg.data.path))
    cfg.data.extra_paths = [str(resolve_path(path, p)) for p in cfg.data.extra_paths]
    cfg.output.dir = str(resolve_path(path, cfg.output.dir))
    if cfg.training.init_from:
        cfg.training.init_from = str(resolve_path(path, cfg.training.init_from))
    return cfg


def _config_hash(cfg: TrainConfig) -> str:
    d = dataclasses.asdict(cfg)
    how = ("time_limit", "threads", "device", "cuda_graphs")  # how a run goes, not what it computes
    d["training"] = {k: v for k, v in d["training"].items() if k not in how}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# -- training ------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device = 'cuda' but CUDA is not available")
    return torch.device(name)


def scales_from_data(strain: np.ndarray, stress: np.ndarray, time: np.ndarray) -> Dict[str, float]:
    """Normalization: RMS strain, geometric mean of non-zero per-component rate magnitude, RMS stress."""
    rate = np.diff(strain, axis=1) / np.diff(time, axis=1)[..., None]
    rn = np.linalg.norm(rate, axis=-1) / math.sqrt(6.0)
    rn = rn[rn > 0]
    return {"strain_scale": float(np.sqrt(np.mean(strain ** 2))) or 1e-3,
            "rate_scale": float(np.exp(np.mean(np.log(rn)))) if rn.size else 1.0,
            "stress_scale": float(np.sqrt(np.mean(stress ** 2))) or 1.0}


def increments(initial: torch.Tensor, pred: torch.Tensor, target: torch.Tensor):
    """Stress increments (B, T', 6) of predicted and target paths (B, T', 6) from the initial stress (B, 1, 6)."""
    return (torch.diff(torch.cat([initial, pred], 1), dim=1), torch.diff(torch.cat([initial, target], 1), dim=1))


def evaluate_loss(model: RNO, strain: torch.Tensor, stress: torch.Tensor, time: torch.Tensor,
                  factor: float = 1.0, batch: int = 1024) -> torch.Tensor:
    """Per-path relative L2 stress errors (B,) at step size dt*factor (no gradients)."""
    errs = []
    with torch.no_grad():
        for i in range(0, strain.shape[0], batch):
            pred, idx = rollout_at_dt_factor(model, strain[i:i + batch], time[i:i + batch], factor)
            errs.append(relative_l2(pred, stress[i:i + batch, 1:][:, idx]))
    return torch.cat(errs) if errs else torch.zeros(0)


def rate_eigenvalues(model: RNO, strain: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Smallest eigenvalue (B*T,) of sym(A), A = :meth:`RNO.rate_tangent` (normalized units), at every
    increment of the paths strain (B, T+1, 6), time (B, T+1), at the model's own internal variables
    along the paths (taken without gradients); differentiable in F's weights."""
    with torch.no_grad():
        _, xi = model.rollout(strain, time, return_xi=True)
    A = model.rate_tangent(strain[:, 1:].reshape(-1, 6), strain[:, :-1].reshape(-1, 6),
                           (time[:, 1:] - time[:, :-1]).reshape(-1), xi.reshape(-1, model.n_state))
    return torch.linalg.eigvalsh(0.5 * (A + A.transpose(1, 2)))[:, 0]


def rate_instability(model: RNO, strain: torch.Tensor, time: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean over all increments of the paths of max(0, margin - :func:`rate_eigenvalues`)."""
    return torch.relu(margin - rate_eigenvalues(model, strain, time)).mean()


#: training paths (evenly spaced over the training split) along which a narrower model is fitted
#: to ``training.init_from``'s (rno.shrink)
SHRINK_PATHS = 512


class Trainer:
    """Training state and loop for one model (one k)."""

    def __init__(self, cfg: TrainConfig, ds: Dict[str, Any], split: Dict[str, List[int]], out_dir: Path,
                 device: torch.device, progress: bool = True):
        self.cfg, self.ds, self.split, self.out, self.device = cfg, ds, split, out_dir, device
        self.progress = progress
        tc = cfg.training
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed)
        self.dtype = getattr(torch, tc.dtype)
        t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=device)  # noqa: E731
        self.data = {name: {key: t(ds[key][idx]) for key in ("strain", "stress", "time")}
                     for name, idx in split.items()}
        tr = split["train"]
        sc = scales_from_data(ds["strain"][tr], ds["stress"][tr], ds["time"][tr])
        arch = cfg.model.arch()
        if tc.init_from:
            self.model = self._warm_start(tc.init_from, arch)
        else:
            self.model = RNO(arch, **sc).to(device=device, dtype=self.dtype)
            self._init_linear_skip(ds["strain"][tr], ds["stress"][tr])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        if tc.schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=tc.epochs, eta_min=tc.lr_min)
        elif tc.schedule == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=0.5, patience=max(tc.patience // 4, 5),
                                                                    min_lr=tc.lr_min)
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: 1.0)
        self.gen = torch.Generator().manual_seed(tc.seed)
        self.epoch = 0
        self.best_val = math.inf
        self.best_epoch = 0
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.bad_epochs = 0
        self.history: List[Dict[str, float]] = []
        self.cfg_hash = _config_hash(cfg)
        self.ckpt = out_dir / "checkpoint.pt"
        #: CUDA graphs of a training batch's loss and gradients, by (batch size, step-size factor)
        self._graphs: Dict[Tuple[int, float], "_GraphedBatch"] = {}

    def _warm_start(self, path: str, arch: RNOArch) -> RNO:
        """The model of an existing surrogate (weights and normalization) as the starting point."""
        from fe2nn.surrogate.card import load_surrogate

        model, _ = load_surrogate(path)
        if arch.odd and not model.arch.odd:  # the odd part of its response (rno.symmetrized)
            model = symmetrized(model)
            print(f"training.init_from = {path}: made odd (rno.symmetrized)", flush=True)
        if model.arch.to_dict() != arch.to_dict():
            old = model.arch
            try:
                if any(a < b for a, b in zip(list(arch.f_hidden) + list(arch.g_hidden),
                                             list(old.f_hidden) + list(old.g_hidden))):
                    # a narrower [model]: cut to it, fitted on the model's own inputs along training paths
                    tr = self.data["train"]
                    pick = torch.as_tensor(np.unique(np.linspace(0, tr["strain"].shape[0] - 1, SHRINK_PATHS).round()
                                                     .astype(np.int64)))
                    model = shrink(model, arch, tr["strain"][pick].double(), tr["time"][pick].double())
                    how = f"cut by pruning, fitted along {pick.numel()} training paths (rno.shrink)"
                else:  # a larger [model]: the same function, with room to learn more (see rno.grow)
                    model = grow(model, arch)
                    how = "same function at the start (rno.grow)"
            except ValueError as err:
                raise UserError(f"training.init_from = {path}: its architecture {old.to_dict()} cannot "
                                f"become [model] {arch.to_dict()}: {err}") from None
            print(f"training.init_from = {path}: {_arch_line(old)} -> {_arch_line(arch)} ({how})", flush=True)
        return model.to(device=self.device, dtype=self.dtype).train()

    def _init_linear_skip(self, strain: np.ndarray, stress: np.ndarray) -> None:
        """Least-squares secant stiffness sigma ~ L e (normalized) as the start of F's linear skip."""
        e = strain[:, 1:].reshape(-1, 6) / self.model.strain_scale
        sig = stress[:, 1:].reshape(-1, 6) / self.model.stress_scale
        L, *_ = np.linalg.lstsq(e, sig, rcond=None)  # (6, 6): sig = e @ L
        with torch.no_grad():
            if self.model.C_el is None:
                self.model.F_linear.weight[:, :6] = torch.as_tensor(L.T, dtype=self.dtype)
                return
            # elastic split: initial (elastic) stiffness from the first increment of every path
            e1 = strain[:, 1] / self.model.strain_scale
            s1 = stress[:, 1] / self.model.stress_scale
            C, *_ = np.linalg.lstsq(e1, s1, rcond=None)
            self.model.C_el.copy_(torch.as_tensor(C.T, dtype=self.dtype))

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {"config_hash": self.cfg_hash, "epoch": self.epoch, "model": self.model.state_dict(),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "generator": self.gen.get_state(), "best_val": self.best_val, "best_epoch": self.best_epoch,
                 "best_state": self.best_state, "bad_epochs": self.bad_epochs,
                 "history": json.dumps(self.history)}
        with atomic_path(self.ckpt) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> None:
        if not self.ckpt.is_file():
            raise UserError(f"{self.ckpt}: no checkpoint to resume from")
        try:
            st = torch.load(self.ckpt, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is a user-facing problem
            raise UserError(f"{self.ckpt}: cannot read checkpoint ({type(err).__name__})") from None
        if st.get("config_hash") != self.cfg_hash:
            raise UserError(f"{self.ckpt}: checkpoint was written with a different configuration; "
                            "remove it or train into another output.dir")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.gen.set_state(st["generator"].cpu())
        self.epoch, self.best_val, self.best_epoch = int(st["epoch"]), float(st["best_val"]), int(st["best_epoch"])
        self.best_state, self.bad_epochs = st["best_state"], int(st["bad_epochs"])
        self.history = json.loads(st["history"])

    # -- loop -------------------------------------------------------------------------
    def train_epoch(self) -> float:
        tc = self.cfg.training
        d = self.data["train"]
        n = d["strain"].shape[0]
        bs = tc.batch_size or n
        perm = torch.randperm(n, generator=self.gen)
        factors = tc.dt_factors
        total, count = 0.0, 0
        self.model.train()
        graphs = self.uses_cuda_graphs()
        for i in range(0, n, bs):
            idx = perm[i:i + bs].to(self.device)
            f = factors[int(torch.randint(len(factors), (1,), generator=self.gen))]
            s, sig, t = d["strain"][idx], d["stress"][idx], d["time"][idx]
            if graphs and len(idx) == bs:  # recorded once per factor, then replayed: grads land in .grad
                key = (bs, f)
                if key not in self._graphs:
                    self._graphs[key] = _GraphedBatch(lambda a, b, c, f=f: self._batch_loss(a, b, c, f),
                                                      list(self.model.parameters()), s, sig, t)
                loss = self._graphs[key].replay(s, sig, t)
            else:
                loss = self._batch_loss(s, sig, t, f)
                if tc.rate_stability_weight > 0:
                    loss = loss + tc.rate_stability_weight * rate_instability(
                        self.model, s[:RATE_STABILITY_PATHS], t[:RATE_STABILITY_PATHS], tc.rate_stability_margin)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        return total / max(count, 1)

    def _batch_loss(self, s: torch.Tensor, sig: torch.Tensor, t: torch.Tensor, f: float) -> torch.Tensor:
        """Training loss of paths strain s (B, T+1, 6), stress sig (B, T+1, 6), time t (B, T+1) run at
        step size dt*f: relative L2 of the stress (+ the weighted increment term), mean over the paths."""
        tc = self.cfg.training
        pred, tidx = rollout_at_dt_factor(self.model, s, t, f)
        target = sig[:, 1:][:, tidx]
        loss = relative_l2(pred, target).mean()
        if tc.increment_weight > 0:
            loss = loss + tc.increment_weight * relative_l2(*increments(sig[:, :1], pred, target)).mean()
        return loss

    def eager_reason(self) -> str:
        """Why batches run eagerly instead of replaying CUDA graphs ("" when they replay them)."""
        tc = self.cfg.training
        if self.device.type != "cuda":
            return "not a CUDA device"
        if not tc.cuda_graphs:
            return "training.cuda_graphs = false"
        if self.model.max_substep_strain > 0:  # data-dependent sub-step counts: host synchronisations
            return "the model trains with sub-steps"
        if tc.rate_stability_weight > 0:  # its eigenvalue solver synchronises with the host
            return "the rate-stability term synchronises with the host"
        return ""

    def uses_cuda_graphs(self) -> bool:
        """Whether full batches replay CUDA graphs (``training.cuda_graphs``): on a CUDA device, for a
        model without sub-steps and without the rate-stability term (:meth:`eager_reason`)."""
        return not self.eager_reason()

    def validation_error(self) -> float:
        self.model.eval()
        d = self.data["val"] if self.data["val"]["strain"].shape[0] else self.data["train"]
        return float(evaluate_loss(self.model, d["strain"], d["stress"], d["time"]).mean())

    def selection_margin(self) -> float:
        """Margin of the rate-stability term in the best-epoch score (``training.selection_margin``)."""
        tc = self.cfg.training
        return tc.rate_stability_margin if tc.selection_margin < 0 else tc.selection_margin

    def validation_instability(self) -> Tuple[float, float]:
        """:func:`rate_instability` on the validation paths at the training margin and at the selection
        margin ((0, 0) without the rate-stability term)."""
        tc = self.cfg.training
        if tc.rate_stability_weight <= 0:
            return 0.0, 0.0
        d = self.data["val"] if self.data["val"]["strain"].shape[0] else self.data["train"]
        n = d["strain"].shape[0]
        with torch.no_grad():
            lam = torch.cat([rate_eigenvalues(self.model, d["strain"][i:i + 256], d["time"][i:i + 256])
                             for i in range(0, n, 256)])
        return (float(torch.relu(tc.rate_stability_margin - lam).mean()),
                float(torch.relu(self.selection_margin() - lam).mean()))

    def run(self, stop_after: Optional[int] = None) -> bool:
        """Train until done; returns True when training finished (epochs or early stop)."""
        tc = self.cfg.training
        from tqdm import tqdm

        t0 = _time.monotonic()
        start = self.epoch
        bar = tqdm(total=tc.epochs, initial=start, desc=f"train k={self.cfg.model.k}", unit="epoch",
                   disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        finished = self.bad_epochs >= tc.patience or self.epoch >= tc.epochs
        try:
            while not finished:
                loss = self.train_epoch()
                val = self.validation_error()
                unstable, violation = self.validation_instability()
                score = val + tc.rate_stability_weight * violation  # the selection score (= val without that term)
                self.epoch += 1
                lr = self.opt.param_groups[0]["lr"]
                if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.sched.step(score)
                else:
                    self.sched.step()
                if score < self.best_val:
                    self.best_val, self.best_epoch, self.bad_epochs = score, self.epoch, 0
                    self.best_state = copy.deepcopy(self.model.state_dict())
                else:
                    self.bad_epochs += 1
                self.history.append({"epoch": self.epoch, "loss": loss, "val": val, "lr": lr,
                                     **({"val_rate_instability": unstable} if tc.rate_stability_weight > 0 else {}),
                                     **({"val_selection_instability": violation}
                                        if tc.rate_stability_weight > 0 and self.selection_margin()
                                        != tc.rate_stability_margin else {})})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", val=f"{val:.4f}", best=f"{self.best_val:.4f}")
                if not self.progress:  # logs of unattended runs: one line per epoch
                    print(f"epoch {self.epoch}/{tc.epochs}: loss {loss:.5f}, validation {val:.4%} "
                          + (f"+ {tc.rate_stability_weight:g} x rate instability {violation:.3e} "
                             + (f"at margin {self.selection_margin():g} (at the training margin {unstable:.3e}) "
                                if self.selection_margin() != tc.rate_stability_margin else "")
                             if tc.rate_stability_weight > 0 else "") +
                          f"(best {self.best_val:.4%} at epoch {self.best_epoch}), lr {lr:.2e}, "
                          f"{_time.monotonic() - t0:.0f} s" + time_left(
                              _time.monotonic() - t0, self.epoch - start, tc.epochs - self.epoch,
                              max(tc.time_limit - (_time.monotonic() - t0), 0.0) if tc.time_limit > 0 else math.inf),
                          flush=True)
                out_of_time = tc.time_limit > 0 and _time.monotonic() - t0 >= tc.time_limit
                if out_of_time:
                    print(f"time limit {tc.time_limit:g} s reached at epoch {self.epoch}: exporting the best model",
                          flush=True)
                finished = self.bad_epochs >= tc.patience or self.epoch >= tc.epochs or out_of_time
                interrupted = stop_after is not None and self.epoch - start >= stop_after
                saved = finished or interrupted or self.epoch % tc.checkpoint_every == 0
                if saved:
                    self.save_checkpoint()
                stop = None if finished else interrupt.requested()
                if stop:  # SIGTERM (fe2nn.interrupt): this epoch is done; keep it and say how to go on
                    if not saved:
                        self.save_checkpoint()
                    raise interrupt.Interrupted(f"stopped by {stop} after epoch {self.epoch} of {tc.epochs} "
                                                f"(k = {self.cfg.model.k}); the checkpoint is {self.ckpt}: "
                                                "continue with --resume")
                if interrupted and not finished:
                    return False
        finally:
            bar.close()
        return True

    def best_val_rel_l2(self) -> float:
        """Validation error of the best epoch (the selection score without the rate-stability term)."""
        rows = [h for h in self.history if h["epoch"] == self.best_epoch]
        return float(rows[-1]["val"]) if rows else self.best_val

    def best_model(self) -> RNO:
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.best_state)
        return m.eval()


class _GraphedBatch:
    """One training batch's loss and its gradients as a recorded CUDA graph.

    ``loss_fn(strain, stress, time)`` is recorded once (after two warm-up passes on a side stream,
    whose gradients are dropped) into static input and gradient tensors; :meth:`replay` copies a batch
    of the same shape in, replays, and points every parameter's ``.grad`` at the recorded gradients,
    which the replay overwrites (the optimizer step, gradient clipping included, stays outside)."""

    def __init__(self, loss_fn, params: List[torch.Tensor], s: torch.Tensor, sig: torch.Tensor, t: torch.Tensor):
        self.params = params
        self.inputs = [s.clone(), sig.clone(), t.clone()]
        side = torch.cuda.Stream(device=s.device)
        side.wait_stream(torch.cuda.current_stream(s.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                for p in params:
                    p.grad = None
                loss_fn(*self.inputs).backward()
        torch.cuda.current_stream(s.device).wait_stream(side)
        for p in params:
            p.grad = None
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss = loss_fn(*self.inputs)
            loss.backward()
        # keep the value only: the autograd graph (its gradient accumulators recorded on the capture
        # stream) must not outlive the recording, or the next recording's warm-up mixes streams
        self.loss = loss.detach()
        self.grads = [p.grad for p in params]

    def replay(self, s: torch.Tensor, sig: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        for dst, src in zip(self.inputs, (s, sig, t)):
            dst.copy_(src)
        self.graph.replay()
        for p, g in zip(self.params, self.grads):
            p.grad = g
        return self.loss


def export(trainer: Trainer, out_dir: Path) -> Dict[str, Any]:
    """Export the best model (card + weights) with envelope, split and measured errors."""
    from fe2nn.surrogate.card import save_surrogate
    from fe2nn.surrogate.material import compute_envelope

    cfg, ds, split = trainer.cfg, trainer.ds, trainer.split
    main, *extra = ds.get("parts") or [{"family_names": ds["family_names"]}]
    model = trainer.best_model().double()
    tr = split["train"]
    h = cfg.training.max_substep_strain
    if h < 0 and model.max_substep_strain > 0:  # fine-tuned: the sub-step length it was trained with
        h = model.max_substep_strain
    elif h < 0:  # the largest strain increment the model was trained on at the data's step size
        h = float(np.linalg.norm(np.diff(ds["strain"][tr], axis=1), axis=-1).max())
    model.max_substep_strain = h
    errors: Dict[str, Any] = {}
    for part in ("train", "val", "test"):
        d = {key: v.double() for key, v in trainer.data[part].items()}
        if d["strain"].shape[0] == 0:
            continue
        for f in (0.25, 1.0, 4.0):
            e = evaluate_loss(model, d["strain"], d["stress"], d["time"], f).cpu().numpy()
            errors[f"{part}_dt_x{f:g}"] = {"mean": float(e.mean()), "p95": float(np.percentile(e, 95)),
                                           "max": float(e.max()), "n": int(e.size)}
    def rel(p: str) -> str:  # paths in the card relative to the surrogate directory (portable)
        return Path(os.path.relpath(os.path.realpath(p), os.path.realpath(out_dir))).as_posix()

    cfg_d = dataclasses.asdict(cfg)
    cfg_d["data"]["path"], cfg_d["output"]["dir"] = rel(cfg.data.path), rel(cfg.output.dir)
    cfg_d["data"]["extra_paths"] = [rel(p) for p in cfg.data.extra_paths]
    if cfg.training.init_from:
        cfg_d["training"]["init_from"] = rel(cfg.training.init_from)
    card = {
        "envelope": compute_envelope(ds["strain"][tr], ds["time"][tr]),
        "dataset": {"path": rel(ds["path"]), "sha256": ds["sha256"], "recipe_sha256": ds.get("recipe_sha256"),
                    "family_names": main["family_names"],
                    "train_families": list(cfg.data.train_families), "split_seed": cfg.data.seed,
                    "split": main.get("split", split),
                    **({"extra": [{"path": rel(p["path"]), "sha256": p["sha256"], "recipe_sha256": p["recipe_sha256"],
                                   "family_names": p["family_names"], "split": p["split"]} for p in extra]}
                       if extra else {})},
        "training": {"epochs_run": trainer.epoch, "best_epoch": trainer.best_epoch,
                     "best_val_rel_l2": trainer.best_val_rel_l2(), "config": cfg_d},
        "errors": {"metric": "relative L2 of stress per path over the whole trajectory", **errors},
    }
    save_surrogate(model, out_dir, card)
    write_text_atomic(out_dir / "history.json", json.dumps(trainer.history) + "\n")
    return errors


def train_one(cfg: TrainConfig, ds, split, out_dir: Path, resume: bool, stop_after: Optional[int],
              progress: bool = True) -> Optional[Trainer]:
    device = _device(cfg.training.device)
    trainer = Trainer(cfg, ds, split, out_dir, device, progress)
    if device.type == "cuda":
        why = trainer.eager_reason()
        print(f"training on {device}: " + (f"eager batches ({why})" if why else "full batches replay CUDA graphs"),
              flush=True)
    if resume:
        trainer.load_checkpoint()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = trainer.run(stop_after)
    if not done:
        print(f"stopped at epoch {trainer.epoch}; continue with --resume (checkpoint {trainer.ckpt})", flush=True)
        return None
    errors = export(trainer, out_dir)
    print(f"k={cfg.model.k}: best validation rel. L2 {trainer.best_val_rel_l2():.4%} at epoch {trainer.best_epoch}; "
          f"test {errors.get('test_dt_x1', {}).get('mean', float('nan')):.4%}; surrogate written to {out_dir}",
          flush=True)
    return trainer


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of usage + exit
        raise UserError(f"{self.prog}: {message}")


def _parse_k_list(text: str) -> List[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--sweep-k must be a comma-separated list of integers >= 0, got {text!r}") from None
    if not ks or any(k < 0 for k in ks):
        raise UserError(f"--sweep-k must be a comma-separated list of integers >= 0, got {text!r}")
    return ks


def main(argv: Optional[List[str]] = None) -> int:
    ap = _Parser(prog="fe2nn train", description="Train an RNO surrogate from a TOML config.")
    ap.add_argument("config", help="training config (TOML)")
    ap.add_argument("--resume", action="store_true", help="continue from output.dir/checkpoint.pt")
    ap.add_argument("--sweep-k", default=None, help="comma-separated k values: train one model each, "
                    "print the validation error per k (models in output.dir/k<k>)")
    ap.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after N epochs of this run")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar: one log line per epoch instead")
    add_override_argument(ap)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.training.threads > 0:
        torch.set_num_threads(cfg.training.threads)
    fams = list(cfg.data.train_families)
    for key, path in [("data.path", cfg.data.path), *((f"data.extra_paths[{i}]", q) for i, q in enumerate(cfg.data.extra_paths))]:
        if not Path(path).is_file():
            raise UserError(f"{args.config}: key '{key}' = '{path}': dataset file not found")
    ds = combine_datasets([read_dataset(p) for p in [cfg.data.path, *cfg.data.extra_paths]], fams,
                          f"{args.config}: data.extra_paths")
    split = split_parts(ds, fams, cfg.data.split, cfg.data.seed, cfg.data.max_samples,
                        f"{args.config}: data.train_families")
    n_idx = sum(len(v) for v in split.values())
    if n_idx < 2:
        raise UserError(f"{cfg.data.path}: only {n_idx} accepted samples of families "
                        f"{cfg.data.train_families}; need at least 2")
    out = Path(cfg.output.dir)
    ks = _parse_k_list(args.sweep_k) if args.sweep_k else list(cfg.training.sweep_k)
    files = ds["path"] + "".join(f" + {p['path']}" for p in ds["parts"][1:])
    print(f"dataset {files}: {n_idx} samples of {', '.join(cfg.data.train_families)} "
          f"(train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])}), "
          f"T = {ds['strain'].shape[1] - 1} increments", flush=True)
    if not ks:
        train_one(cfg, ds, split, out, args.resume, args.stop_after, not args.no_progress)
        return 0
    results = {}
    for k in ks:
        c = copy.deepcopy(cfg)
        c.model.k = k
        c.training.sweep_k = []
        sub = out / f"k{k}"
        resume = args.resume and (sub / "checkpoint.pt").is_file()
        tr = train_one(c, ds, split, sub, resume, args.stop_after, not args.no_progress)
        if tr is None:
            return 0
        results[k] = {"val_rel_l2": tr.best_val_rel_l2(), "best_epoch": tr.best_epoch, "dir": str(sub)}
    print("\nk sweep (validation relative L2 stress error, best epoch):")
    print(f"{'k':>4} {'val error':>10} {'epoch':>6}")
    for k, r in results.items():
        print(f"{k:>4} {r['val_rel_l2']:>10.4%} {r['best_epoch']:>6}")
    best = min(results, key=lambda k: results[k]["val_rel_l2"])
    print(f"lowest validation error: k = {best} ({results[best]['dir']})")
    write_text_atomic(out / "sweep.json", json.dumps({str(k): v for k, v in results.items()}, indent=2) + "\n")
    return 0
