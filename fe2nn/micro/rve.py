"""RVE configuration (the ``[rve]`` TOML table) and :func:`build_rve` -> a batched Material.

Shared by ``fe2nn generate`` and the FE² backend.  Keys::

    [rve]
    solver = "taylor"          # "taylor" | "fft" (| "j2" | "elastic": cheap stand-ins for tests)
    material = "aluminium"     # crystal parameter set: bundled name or path to a TOML file
    device = "cpu"             # "cpu", "cuda", or "auto" (cuda when available)
    options = {}               # extra keyword arguments of the solver (e.g. FFT tolerances)
    [rve.microstructure]
    n_grains = 20              # Voronoi grains
    grid = 16                  # voxels per side (FFT; Taylor uses the grain volume fractions)
    seed = 0                   # Voronoi seed
    texture = "random"         # grain orientations: "random" or "fibre:hkl" (e.g. "fibre:111")
    file = ""                  # or a saved microstructure file (overrides the three above)

For the stand-ins, ``options`` holds the law's parameters, e.g.
``options = {E = 70e9, nu = 0.33, sigma_y = 100e6, H_iso = 1e9}`` for ``solver = "j2"``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict

import torch

from fe2nn.config import non_negative, one_of, positive, resolve_path
from fe2nn.errors import UserError
from fe2nn.materials.base import Material

SOLVERS = ("taylor", "fft", "j2", "elastic")


@dataclass
class MicrostructureConfig:
    n_grains: int = field(default=20, metadata=dict(doc="number of Voronoi grains", check=positive))
    grid: int = field(default=16, metadata=dict(doc="voxels per side of the periodic cell", check=positive))
    seed: int = field(default=0, metadata=dict(doc="Voronoi seed", check=non_negative))
    texture: str = field(default="random", metadata=dict(doc="grain orientations: 'random' or 'fibre:hkl'"))
    file: str = field(default="", metadata=dict(doc="saved microstructure file (overrides n_grains/grid/seed)"))


@dataclass
class RVEConfig:
    solver: str = field(default="taylor", metadata=dict(doc="RVE solver", check=one_of(*SOLVERS)))
    material: str = field(default="aluminium", metadata=dict(doc="crystal parameter set: name or TOML path"))
    device: str = field(default="cpu", metadata=dict(doc="torch device", check=lambda v: None if (
        v in ("cpu", "auto") or v.startswith("cuda")) else "must be 'cpu', 'cuda[:N]' or 'auto'"))
    options: Dict[str, Any] = field(default_factory=dict, metadata=dict(doc="extra solver keyword arguments"))
    microstructure: MicrostructureConfig = field(default_factory=MicrostructureConfig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"rve.device = {name!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
    return dev


def _call(factory, kwargs: dict, what: str, config_file: str, args: tuple = (), where: str = "rve"):
    """Call a constructor, turning bad option names/values into one-line UserErrors."""
    try:
        sig = inspect.signature(factory)
        params = sig.parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            for key in kwargs:
                if key not in params:
                    raise UserError(f"{config_file}: unknown key 'rve.options.{key}' for {what}; "
                                    f"expected one of: {', '.join(k for k in params if k != 'self')}")
    except (TypeError, ValueError):
        pass
    try:
        return factory(*args, **kwargs)
    except TypeError as err:
        m = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if m:
            raise UserError(f"{config_file}: unknown key 'rve.options.{m.group(1)}' for {what}") from None
        raise UserError(f"{config_file}: {where} ({what}): {err}") from None
    except ValueError as err:
        raise UserError(f"{config_file}: {where} ({what}): {err}") from None


def load_microstructure(cfg: MicrostructureConfig, config_file: str = "<config>"):
    """The Microstructure described by ``cfg`` (Voronoi or loaded from ``cfg.file``)."""
    try:
        from fe2nn.micro.microstructure import Microstructure
    except ImportError:
        raise UserError(f"{config_file}: rve.microstructure: microstructures are not available in this fe2nn "
                        "build (fe2nn.micro.microstructure missing)") from None

    if cfg.file:
        path = resolve_path(config_file, cfg.file)
        if not path.is_file():
            raise UserError(f"{config_file}: key 'rve.microstructure.file': {path} not found")
        loader = getattr(Microstructure, "load", None)
        if loader is None:
            raise UserError(f"{config_file}: loading microstructure files is not supported by this fe2nn")
        try:
            return loader(path)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
            raise UserError(f"{path}: not a valid microstructure file ({err})") from None
    return _call(Microstructure.voronoi, dict(n_grains=cfg.n_grains, grid=cfg.grid, seed=cfg.seed,
                                              orientations=cfg.texture), "Microstructure.voronoi", config_file,
                 where="rve.microstructure")


def load_crystal(cfg: RVEConfig, config_file: str = "<config>"):
    """Crystal parameters named (or pointed to) by ``cfg.material``."""
    from fe2nn.micro import crystal

    name = cfg.material
    if name.endswith(".toml"):
        name = str(resolve_path(config_file, name))
    try:
        return crystal.load_params(name)
    except (UserError, OSError, KeyError, ValueError) as err:
        raise UserError(f"{config_file}: key 'rve.material' = {cfg.material!r}: {err}") from None


def build_rve(cfg: RVEConfig, config_file: str = "<config>") -> Material:
    """The batched RVE Material described by ``cfg``."""
    device = resolve_device(cfg.device)
    opts = dict(cfg.options)
    if cfg.solver == "elastic":
        from fe2nn.materials.elastic import LinearElastic

        return _call(LinearElastic, dict(opts, device=device), "LinearElastic", config_file)
    if cfg.solver == "j2":
        from fe2nn.materials.j2 import J2Plasticity

        return _call(J2Plasticity, dict(opts, device=device), "J2Plasticity", config_file)
    params = load_crystal(cfg, config_file)
    micro = load_microstructure(cfg.microstructure, config_file)
    if cfg.solver == "taylor":
        try:
            from fe2nn.micro.taylor import TaylorRVE
        except ImportError:
            raise UserError(f"{config_file}: rve.solver = 'taylor' is not available in this fe2nn build") from None

        return _call(TaylorRVE.from_microstructure, dict(device=device, **opts), "TaylorRVE", config_file,
                     args=(micro, params))
    try:
        from fe2nn.micro.fft import FFTRVE
    except ImportError:
        raise UserError(f"{config_file}: rve.solver = 'fft' is not available in this fe2nn build") from None
    return _call(FFTRVE, dict(device=device, **opts), "FFTRVE", config_file, args=(params, micro))


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def describe(cfg: RVEConfig, config_file: str = "<config>") -> Dict[str, Any]:
    """JSON-able metadata of the RVE: solver settings, material parameters, microstructure seed/hash."""
    out: Dict[str, Any] = {"solver": cfg.solver, "options": _jsonable(cfg.options), "device": cfg.device}
    if cfg.solver in ("elastic", "j2"):
        out["material"] = {"law": cfg.solver, **_jsonable(cfg.options)}
        return out
    out["material"] = {"name": cfg.material, "parameters": _jsonable(load_crystal(cfg, config_file))}
    micro = load_microstructure(cfg.microstructure, config_file)
    ms = dataclasses.asdict(cfg.microstructure)
    try:
        ms["hash"] = micro.hash()
    except Exception:  # noqa: BLE001 - metadata only
        ms["hash"] = None
    out["microstructure"] = ms
    return out


def describe_json(cfg: RVEConfig, config_file: str = "<config>") -> str:
    return json.dumps(describe(cfg, config_file), sort_keys=True)


__all__ = ["RVEConfig", "MicrostructureConfig", "build_rve", "describe", "load_microstructure", "resolve_device"]
