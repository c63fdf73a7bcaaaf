"""``[material] model = "rve"``: the full crystal-plasticity RVE at every quadrature point (true FE²).

    [material]
    model = "rve"
    solver = "taylor"            # "taylor" | "fft"
    material = "aluminium"       # crystal parameter set: bundled name or TOML file (relative to the config)
    device = "cpu"
    options = {}                 # solver keyword arguments, e.g. {tol = 1e-6} for "fft"
    [material.microstructure]
    n_grains = 20
    grid = 8                     # voxels per side (FFT)
    seed = 0
    file = ""                    # or a saved microstructure

The keys are those of the ``[rve]`` table of ``fe2nn generate`` (fe2nn/micro/rve.py),
so a surrogate and the RVE it was trained on are described the same way.  Every
quadrature point owns one RVE; its per-grain / per-voxel state lives in the macro
solver's state dict (committed on convergence, dropped on a cut-back) and all
points of a rank advance in one batched RVE call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fe2nn.config import non_negative
from fe2nn.errors import UserError
from fe2nn.materials.registry import register
from fe2nn.micro.rve import RVEConfig, build_rve

#: stand-in name of the config file handed to build_rve (only its directory is used)
_PLACEHOLDER = "__fe2nn_material_config__"


def build_rve_material(cfg: RVEConfig, base_dir: Path):
    """Batched RVE material; configuration errors become ValueErrors naming the ``material.*`` key."""
    from fe2nn.fe2 import keep_freed_memory, share_threads

    share_threads(getattr(cfg, "threads", 1))
    keep_freed_memory()
    fake = str(Path(base_dir) / _PLACEHOLDER)
    try:
        return build_rve(cfg, fake)
    except UserError as err:
        msg = str(err).replace(f"{fake}: ", "").replace(fake, "config").replace("'rve.", "'material.")
        msg = msg.replace("rve.", "material.")
        raise ValueError(msg) from None


@dataclass
class RveParams(RVEConfig):
    """The ``[rve]`` keys plus the surrogate keys of model 'rno' (accepted and ignored), so that a
    ``[material]`` table switches between the surrogate and its RVE with the one key ``model``."""

    surrogate: str = field(default="", metadata=dict(doc="surrogate of model 'rno' (ignored by 'rve')"))
    envelope_margin: float = field(default=0.05, metadata=dict(doc="model 'rno' only (ignored by 'rve')"))
    chunk: int = field(default=16384, metadata=dict(doc="model 'rno' only (ignored by 'rve')"))
    tangent_dtype: str = field(default="auto", metadata=dict(doc="model 'rno' only (ignored by 'rve')"))
    threads: int = field(default=1, metadata=dict(
        check=non_negative, doc="torch threads per rank; 0 = cores / ranks (or OMP_NUM_THREADS)"))


#: keys of model = "rno" that model = "rve" accepts and ignores
RNO_KEYS = ("surrogate", "envelope_margin", "chunk", "tangent_dtype")

register("rve", build_rve_material, RveParams)
