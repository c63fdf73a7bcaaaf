"""HDF5 RVE datasets (format in README "Dataset format"): validation, content hash, torch loaders.

Example::

    from fe2nn.data.dataset import load_dataset, content_hash
    train = load_dataset("al_taylor.h5", split="train")   # accepted samples only
    train.strain.shape, train.stress.shape, train.dt.shape  # (n,T+1,6), (n,T+1,6), (n,T)
    content_hash("al_taylor.h5")                            # sha256 hex of the data arrays
    recipe_hash("al_taylor.h5")                             # sha256 hex of what they were made from
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import torch

from fe2nn.errors import UserError

FORMAT = "fe2nn-dataset"
FORMAT_VERSION = 1

#: name -> (dtype kind, shape template with N samples and T increments)
FIELDS: Dict[str, tuple] = {
    "strain": ("f", ("N", "T+1", 6)),
    "stress": ("f", ("N", "T+1", 6)),
    "time": ("f", ("N", "T+1")),
    "hill_mandel": ("f", ("N", "T")),
    "iterations": ("i", ("N", "T")),
    "converged": ("b", ("N",)),
    "accepted": ("b", ("N",)),
    "family": ("i", ("N",)),
    "sample_index": ("i", ("N",)),
}
#: arrays covered by the content hash, in this order, with the dtype they are hashed in
HASHED = (("strain", "<f8"), ("stress", "<f8"), ("time", "<f8"), ("hill_mandel", "<f8"), ("iterations", "<i8"),
          ("converged", "|b1"), ("accepted", "|b1"), ("family", "<i8"), ("sample_index", "<i8"))
SPLITS = ("train", "all", "rejected")


def array_checksum(arrays: Mapping[str, np.ndarray], names: Sequence[tuple] = HASHED) -> str:
    """sha256 (hex) over the arrays ``names`` (name, dtype) in order, with their shapes."""
    h = hashlib.sha256()
    for name, dtype in names:
        a = np.ascontiguousarray(np.asarray(arrays[name]).astype(dtype, copy=False))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


#: arrays (with the dtype they are hashed in) that the recipe hash covers besides the attributes
RECIPE_ARRAYS = (("accepted", "|b1"), ("family", "<i8"), ("sample_index", "<i8"))


def rve_identity(attrs: Mapping[str, Any]) -> Dict[str, Any]:
    """What identifies a dataset's RVE in its (decoded, :func:`decode_attrs`) attributes: the crystal
    parameters, the microstructure settings (and the microstructure's own hash only when it was read
    from a file: a generated one's covers orientations, which round per CPU) and the solver with its
    options and sub-step limit, not the device or batch size."""
    material, micro, solver = (attrs.get(k) for k in ("material", "microstructure", "solver"))
    if isinstance(micro, dict):
        micro = {k: v for k, v in micro.items() if k != "hash" or micro.get("file")}
    if isinstance(solver, dict):
        solver = {k: v for k, v in solver.items() if k not in ("device", "batch_size")}
    return {"material": material, "microstructure": micro, "solver": solver}


def recipe_checksum(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> str | None:
    """sha256 (hex) of what a dataset was made from rather than of its floating-point results.

    Covers the path definition (``paths`` attribute: seed, increments, family settings), the
    RVE (crystal parameters; microstructure settings, and the microstructure's own hash only
    when it was read from a file; solver, its options and sub-step limit; not the device or
    batch size), the array shapes and which samples were accepted, of which family and index.
    A dataset regenerated from the same config on another machine has the same recipe hash,
    while its content hash (:func:`array_checksum`) generally differs: numpy's exp/log and
    torch's kernels round differently on different CPUs, so strains and stresses can differ in
    their last bits.  None when the attributes are missing (files not written by ``fe2nn generate``).
    """
    a = decode_attrs(attrs)
    paths = a.get("paths")
    if not (isinstance(paths, dict) and isinstance(a.get("solver"), dict)) or "material" not in a:
        return None
    h = hashlib.sha256(json.dumps({"paths": paths, **rve_identity(a),
                                   "shape": list(np.shape(arrays["strain"]))}, sort_keys=True).encode())
    h.update(array_checksum(arrays, RECIPE_ARRAYS).encode())
    return h.hexdigest()


def _open(path: Path):
    import h5py

    if not path.exists():
        raise UserError(f"{path}: dataset file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected an HDF5 dataset file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {err}") from None


def read_arrays(path: str | Path) -> tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """All arrays and root attributes of a dataset, validated (UserError naming the file otherwise)."""
    path = Path(path)
    with _open(path) as fh:
        if fh.attrs.get("format") != FORMAT:
            raise UserError(f"{path}: not an fe2nn dataset (missing attribute format = '{FORMAT}')")
        missing = [n for n in FIELDS if n not in fh]
        if missing:
            raise UserError(f"{path}: not a complete fe2nn dataset: missing {', '.join(missing)}")
        try:
            arrays = {n: fh[n][()] for n in FIELDS}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fh.attrs.items()}
            attrs["family_names"] = [str(s.decode() if isinstance(s, bytes) else s)
                                     for s in fh["family"].attrs.get("family_names", [])]
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"{path}: corrupt dataset (cannot read arrays: {err})") from None
    validate_arrays(arrays, str(path))
    stored = attrs.get("content_hash")
    if stored is not None and stored != array_checksum(arrays):
        raise UserError(f"{path}: content hash mismatch (file corrupt or modified)")
    return arrays, attrs


def validate_arrays(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Shape/dtype checks of the dataset arrays (UserError naming ``where``)."""
    N, T1 = arrays["strain"].shape[:2] if arrays["strain"].ndim == 3 else (-1, -1)
    if N < 0 or T1 < 2:
        raise UserError(f"{where}: 'strain' must have shape (N, T+1, 6), got {arrays['strain'].shape}")
    dims = {"N": N, "T+1": T1, "T": T1 - 1}
    for name, (kind, shape) in FIELDS.items():
        a = arrays[name]
        want = tuple(dims.get(s, s) for s in shape)
        if a.shape != want:
            raise UserError(f"{where}: '{name}' has shape {a.shape}, expected {want}")
        if kind == "f" and a.dtype.kind != "f" or kind == "i" and a.dtype.kind not in "iu" \
                or kind == "b" and a.dtype.kind != "b":
            raise UserError(f"{where}: '{name}' has dtype {a.dtype}, expected kind {kind!r}")


def content_hash(path: str | Path) -> str:
    """Stable sha256 (hex) of the data arrays of a dataset (independent of attributes and chunking)."""
    arrays, _ = read_arrays(path)
    return array_checksum(arrays)


def recipe_hash(path: str | Path) -> str | None:
    """:func:`recipe_checksum` of a dataset file: equal for the same config regenerated elsewhere."""
    return recipe_checksum(*read_arrays(path))


def metadata(path: str | Path) -> Dict[str, Any]:
    """Root attributes, JSON values decoded."""
    return decode_attrs(read_arrays(path)[1])


def decode_attrs(attrs: Mapping[str, Any]) -> Dict[str, Any]:
    """Root attributes with their JSON objects and lists decoded and numpy scalars as Python ones."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, str) and v[:1] in "{[":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


@dataclass
class Samples:
    """Dataset samples as torch tensors (float64 unless asked otherwise).

    strain, stress: (n, T+1, 6) Mandel [-], [Pa]; time: (n, T+1) [s]; dt: (n, T) [s];
    family: (n,) codes into ``family_names``; index: (n,) sample indices in the file.
    """

    strain: torch.Tensor
    stress: torch.Tensor
    time: torch.Tensor
    dt: torch.Tensor
    family: torch.Tensor
    index: torch.Tensor
    family_names: tuple
    metadata: Dict[str, Any]
    content_hash: str

    def __len__(self) -> int:
        return int(self.strain.shape[0])


def load_dataset(path: str | Path, split: str = "train", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64) -> Samples:
    """Load a dataset; ``split``: "train" (accepted samples), "all", or "rejected"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    arrays, attrs = read_arrays(path)
    accepted = arrays["accepted"].astype(bool)
    sel = {"train": accepted, "all": np.ones_like(accepted), "rejected": ~accepted}[split]
    idx = np.nonzero(sel)[0]

    def t(a, dt_=dtype):
        return torch.as_tensor(np.ascontiguousarray(a[idx]), dtype=dt_, device=device)

    time = t(arrays["time"])
    meta = metadata(path)
    return Samples(strain=t(arrays["strain"]), stress=t(arrays["stress"]), time=time,
                   dt=time[:, 1:] - time[:, :-1], family=t(arrays["family"], torch.int64),
                   index=torch.as_tensor(idx, dtype=torch.int64, device=device),
                   family_names=tuple(attrs["family_names"]), metadata=meta,
                   content_hash=array_checksum(arrays))


def rejection_reasons(arrays: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Counts of rejected samples by reason (a non-converged sample is counted only as such)."""
    conv = arrays["converged"].astype(bool)
    acc = arrays["accepted"].astype(bool)
    return {"not_converged": int((~conv).sum()), "hill_mandel": int((conv & ~acc).sum())}
