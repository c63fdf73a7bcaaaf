"""Material registry: a config ``[material]`` table -> a :class:`~fe2nn.materials.base.Material`.

    [material]
    model = "j2"          # a registered name
    E = 200e9             # the model's parameters (SI)
    nu = 0.3
    sigma_y = 250e6

Built in: ``elastic`` (E, nu) and ``j2`` (E, nu, sigma_y, H_iso, H_kin).  Other
backends plug in without editing this file::

    from fe2nn.materials.registry import register
    register("rno", build_rno, params=RnoParams)   # RnoParams: a config dataclass

``builder(params, base_dir)`` gets the parsed parameter dataclass (or the raw
dict when no ``params`` class is given) and the directory of the config file
(for relative paths) and returns a Material.  A ValueError it raises becomes a
one-line UserError naming the config file.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from fe2nn.config import in_range, non_negative, parse, positive
from fe2nn.errors import UserError

Builder = Callable[[Any, Path], Any]

_REGISTRY: Dict[str, Tuple[Builder, Optional[type]]] = {}

#: model name -> module whose import registers it (tried on first use of the name);
#: a name not listed here is looked up as module ``fe2nn.materials.<name>``
_LAZY: Dict[str, str] = {"rno": "fe2nn.materials.rno", "rve": "fe2nn.materials.rve"}


def register(name: str, builder: Builder, params: Optional[type] = None) -> None:
    """Register a material model under ``name`` (overrides an existing one)."""
    if params is not None and not dataclasses.is_dataclass(params):
        raise TypeError("params must be a dataclass type")
    _REGISTRY[name] = (builder, params)


def available() -> list[str]:
    """Registered model names, including the FE² backends that register on first use."""
    return sorted(set(_REGISTRY) | set(_LAZY))


def parse_material(table: dict, file: str = "<config>", key: str = "material"):
    """Validate a material table; return (name, parsed params).  No torch needed."""
    if not isinstance(table, dict):
        raise UserError(f"{file}: '{key}' must be a table")
    if "model" not in table:
        raise UserError(f"{file}: missing key '{key}.model' (one of: {', '.join(available())})")
    name = table["model"]
    if not isinstance(name, str):
        raise UserError(f"{file}: key '{key}.model' must be a string, got {name!r}")
    if name not in _REGISTRY and name.isidentifier():
        module = _LAZY.get(name, f"fe2nn.materials.{name}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"{file}: unknown material model '{key}.model' = {name!r}{hint}; "
                        f"expected one of: {', '.join(available())}")
    _, params_cls = _REGISTRY[name]
    rest = {k: v for k, v in table.items() if k != "model"}
    params = parse(params_cls, rest, file, key) if params_cls is not None else rest
    return name, params


def build_material(table: dict, file: str = "<config>", base_dir: Path | None = None, key: str = "material"):
    """Material from a config table; every user mistake is a one-line UserError."""
    name, params = parse_material(table, file, key)
    builder, _ = _REGISTRY[name]
    try:
        return builder(params, Path(base_dir) if base_dir is not None else Path(file).resolve().parent)
    except ValueError as err:
        raise UserError(f"{file}: [{key}] model {name!r}: {err}") from None


# -- built-in models -----------------------------------------------------------------------
def _device_check(v):
    return None if v in ("cpu", "cuda", "auto") or v.startswith("cuda:") else "must be 'cpu', 'cuda[:i]' or 'auto'"


def _device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@dataclass
class ElasticParams:
    E: float = field(metadata=dict(check=positive, doc="Young's modulus [Pa], > 0"))
    nu: float = field(metadata=dict(check=in_range(-1.0, 0.5, closed=False), doc="Poisson's ratio in (-1, 0.5)"))
    device: str = field(default="cpu", metadata=dict(check=_device_check))


@dataclass
class J2Params:
    E: float = field(metadata=dict(check=positive, doc="Young's modulus [Pa], > 0"))
    nu: float = field(metadata=dict(check=in_range(-1.0, 0.5, closed=False), doc="Poisson's ratio in (-1, 0.5)"))
    sigma_y: float = field(metadata=dict(check=positive, doc="initial yield stress [Pa], > 0"))
    H_iso: float = field(default=0.0, metadata=dict(check=non_negative, doc="isotropic hardening modulus [Pa]"))
    H_kin: float = field(default=0.0, metadata=dict(check=non_negative, doc="kinematic hardening modulus [Pa]"))
    device: str = field(default="cpu", metadata=dict(check=_device_check))


def _build_elastic(p: ElasticParams, base_dir: Path):
    from fe2nn.materials.elastic import LinearElastic

    return LinearElastic(p.E, p.nu, device=_device(p.device))


def _build_j2(p: J2Params, base_dir: Path):
    from fe2nn.materials.j2 import J2Plasticity

    return J2Plasticity(p.E, p.nu, p.sigma_y, H_iso=p.H_iso, H_kin=p.H_kin, device=_device(p.device))


register("elastic", _build_elastic, ElasticParams)
register("j2", _build_j2, J2Params)
