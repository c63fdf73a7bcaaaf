"""``[material] model = "rno"``: a trained RNO surrogate as the macro constitutive law.

    [material]
    model = "rno"
    surrogate = "../surrogates/aluminium_taylor"   # directory (or its card.json), relative to the config
    device = "cpu"                                  # "cpu", "cuda[:i]" or "auto"
    envelope_margin = 0.05                          # relative slack of the out-of-distribution check
    tangent_dtype = "auto"                          # Newton tangent precision: float32 on a CPU, float64 on a GPU
    # optional: the RVE the surrogate stands for (keys of model = "rve"; ignored here), so that
    # switching to the full RVE is the one key  model = "rve"
    solver = "taylor"
    material = "aluminium"
    microstructure = {n_grains = 30, grid = 32, seed = 7}

The card is read and checked (format, version, architecture, strain dimension 6,
weights sha256) when the material is built, i.e. before the macro solve starts;
every problem is one line naming the surrogate file.  After each update the
material publishes ``info["ood"]`` (n,) -- the points whose strain or strain rate
lies outside the card's training envelope (see
:meth:`fe2nn.surrogate.material.RNOMaterial.envelope_violation`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from typing import Any, Dict

from fe2nn.config import non_negative
from fe2nn.errors import UserError
from fe2nn.materials.registry import _device, _device_check, register
from fe2nn.micro.rve import SOLVERS, MicrostructureConfig
from fe2nn.config import one_of


@dataclass
class RnoParams:
    surrogate: str = field(metadata=dict(doc="surrogate directory or card.json, relative to the config file"))
    device: str = field(default="cpu", metadata=dict(check=_device_check))
    envelope_margin: float = field(default=0.05, metadata=dict(
        check=non_negative, doc="relative slack of the training-envelope check"))
    chunk: int = field(default=0, metadata=dict(
        check=non_negative, doc="points per tangent pass; 0 = 1024 on a CPU (cache-sized), 16384 on a GPU"))
    tangent_dtype: str = field(default="auto", metadata=dict(
        check=one_of("auto", "float32", "float64"),
        doc="precision of the consistent tangent (the stress is always float64); auto = float32 on a "
            "CPU (a separate, cheaper pass), float64 on a GPU (from the stress pass itself)"))
    threads: int = field(default=1, metadata=dict(
        check=non_negative, doc="torch threads per rank; 0 = cores / ranks (or OMP_NUM_THREADS)"))
    # the RVE the surrogate stands for: used by model = "rve" (and fe2nn validate), ignored here
    solver: str = field(default="taylor", metadata=dict(check=one_of(*SOLVERS), doc="RVE solver (model 'rve')"))
    material: str = field(default="aluminium", metadata=dict(doc="crystal parameter set (model 'rve')"))
    options: Dict[str, Any] = field(default_factory=dict, metadata=dict(doc="RVE solver options (model 'rve')"))
    microstructure: MicrostructureConfig = field(default_factory=MicrostructureConfig)


#: keys of model = "rve" (the RVE the surrogate stands for) that model = "rno" accepts and ignores
RVE_KEYS = ("solver", "material", "options", "microstructure")


def surrogate_path(p: RnoParams, base_dir: Path) -> Path:
    """The surrogate path of ``p`` resolved against the config directory."""
    path = Path(p.surrogate).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def build_rno(p: RnoParams, base_dir: Path):
    """RNOMaterial from the surrogate named in ``p``; a bad card is a one-line error naming its file."""
    from fe2nn.surrogate.material import RNOMaterial

    path = surrogate_path(p, base_dir)
    if not path.exists():
        raise ValueError(f"key 'material.surrogate': {path}: surrogate not found "
                         "(expected a directory with card.json and weights.safetensors, or a card.json)")
    from fe2nn.fe2 import keep_freed_memory, share_threads

    share_threads(p.threads)
    keep_freed_memory()
    device = _device(p.device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"key 'material.device' = {p.device!r}: CUDA is not available (use 'cpu' or 'auto')")
    try:
        mat = RNOMaterial(path, device=device, envelope_margin=p.envelope_margin, chunk=p.chunk or None,
                                tangent_dtype=p.tangent_dtype)
    except UserError as err:  # the card loader names the file; add the config context
        raise ValueError(f"key 'material.surrogate': {err}") from None
    return mat


register("rno", build_rno, RnoParams)
