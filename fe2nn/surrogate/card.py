"""Export and import of trained surrogates: safetensors weights + a JSON card.

A surrogate is a directory with two files:

* ``weights.safetensors`` -- the RNO parameters and normalization buffer (float64);
* ``card.json`` -- format version, architecture, k, normalization, units, Mandel
  convention, training envelope, dataset hash, measured errors and the sha256 of the
  weights file.

Loading never executes code from the files: only ``json`` and ``safetensors`` are
used (no pickle).  Any problem -- missing file, invalid JSON, other format version,
wrong tensor names/shapes, strain dimension other than 6, weights whose sha256 does
not match the card -- raises :class:`fe2nn.errors.UserError` with one line naming
the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from fe2nn.errors import UserError
from fe2nn.io_utils import atomic_path, write_text_atomic
from fe2nn.surrogate.rno import RNO, RNOArch

CARD_FORMAT = "fe2nn-rno-card"
FORMAT_VERSION = 1
CARD_NAME = "card.json"
WEIGHTS_NAME = "weights.safetensors"

MANDEL = "Mandel: a = (a11, a22, a33, sqrt2*a23, sqrt2*a13, sqrt2*a12); tensorial shear strains"
UNITS = {"strain": "-", "strain_rate": "1/s", "stress": "Pa", "time": "s", "tangent": "Pa"}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def card_paths(path: str | os.PathLike) -> Tuple[Path, Path]:
    """(surrogate directory, card file) for a directory or a card-file path."""
    p = Path(path)
    if p.is_dir():
        return p, p / CARD_NAME
    return p.parent, p


def save_surrogate(model: RNO, directory: str | os.PathLike, card: Dict[str, Any] | None = None) -> Path:
    """Write ``weights.safetensors`` and ``card.json`` into ``directory`` (atomically).

    ``card`` adds fields (envelope, dataset, training, errors, ...); the format,
    architecture, normalization, units, notation and weights hash are filled here.
    Returns the card path.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", torch.float64).contiguous() for name, t in model.state_dict().items()}
    wpath = d / WEIGHTS_NAME
    with atomic_path(wpath) as tmp:
        save_file(tensors, str(tmp))  # no metadata: its order in the header is not deterministic
    full = dict(card or {})
    full.update({
        "format": CARD_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": "recurrent neural operator (Liu et al., J. Mech. Phys. Solids 2023)",
        "equations": {
            "internal_variables": ("xi_n = xi_{n-1} + (dt_n/t_s) [A + B q], (A, B) = G(eps_n/e_s, asinh q, xi_{n-1}), "
                                   "q = (eps_n - eps_{n-1})/(dt_n r_s), B (k x 6)"
                                   if model.arch.g_increment else
                                   "xi_n = xi_{n-1} + (dt_n/t_s) G(eps_n/e_s, (eps_n - eps_{n-1})/(dt_n r_s), xi_{n-1})"
                                   if model.arch.g_rate else
                                   "xi_n = xi_{n-1} + (dt_n/t_s) G(eps_n/e_s, xi_{n-1})") + ", xi_0 = 0",
            "stress": ("sigma_n = s_s [C_el (eps_n/e_s - xi_n[:6]) + F(eps_n/e_s, asinh((eps_n - eps_{n-1})/(dt_n r_s)), "
                       "B tanh(xi_n/B))] (elastic split: xi[:6] is a normalized plastic strain)"
                       if model.arch.elastic_split else
                       "sigma_n = s_s F(eps_n/e_s, asinh((eps_n - eps_{n-1})/(dt_n r_s)), xi_n)"),
            "xi_in_F": "updated (xi_n)",
        },
        "architecture": model.arch.to_dict(),
        "integration": {"max_substep_strain": float(model.max_substep_strain),
                        "doc": ("a strain increment (Mandel norm) above this length integrates xi in equal "
                                "sub-steps, blended between two counts so that it is C1 in the strain (RNO._blend), "
                                "at most RNO.MAX_SUBSTEPS per increment; 0 = one step per increment")},
        "k": model.k,
        "normalization": model.normalization(),
        "units": UNITS,
        "notation": MANDEL,
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": sha256_file(wpath),
    })
    cpath = d / CARD_NAME
    write_text_atomic(cpath, json.dumps(full, indent=2, sort_keys=False) + "\n")
    return cpath


def update_card(path: str | os.PathLike, fields: Dict[str, Any]) -> None:
    """Merge ``fields`` into an existing card (weights untouched); atomic rewrite."""
    _, cpath = card_paths(path)
    card = read_card(cpath)
    card.update(fields)
    write_text_atomic(cpath, json.dumps(card, indent=2) + "\n")


def read_card(cpath: Path) -> Dict[str, Any]:
    """Parse and check a card's JSON (format and version); UserError naming the file."""
    if not cpath.is_file():
        raise UserError(f"{cpath}: surrogate card not found (expected a surrogate directory or its {CARD_NAME})")
    try:
        card = json.loads(cpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{cpath}: corrupt surrogate card (invalid JSON: {err})") from None
    if not isinstance(card, dict):
        raise UserError(f"{cpath}: corrupt surrogate card (top level is not a JSON object)")
    if card.get("format") != CARD_FORMAT:
        raise UserError(f"{cpath}: not an fe2nn surrogate card (format {card.get('format')!r}, expected {CARD_FORMAT!r})")
    if card.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{cpath}: unsupported card format version {card.get('format_version')!r} "
                        f"(this fe2nn reads version {FORMAT_VERSION})")
    return card


def _get(card: dict, cpath: Path, *keys):
    cur: Any = card
    for i, k in enumerate(keys):
        if not isinstance(cur, dict) or k not in cur:
            raise UserError(f"{cpath}: incompatible surrogate card (missing key '{'.'.join(keys[:i + 1])}')")
        cur = cur[k]
    return cur


def _arch(arch_d: Dict[str, Any]) -> RNOArch:
    """The architecture of a card's ``architecture`` table: each field of :class:`RNOArch` it has, as the
    type of that field's default (lists of int widths); the others at their defaults.  TypeError or
    ValueError for a value of the wrong kind."""
    default = RNOArch()
    kw: Dict[str, Any] = {}
    for f in fields(RNOArch):
        if f.name in arch_d:
            kind, v = type(getattr(default, f.name)), arch_d[f.name]
            kw[f.name] = [int(w) for w in v] if kind is list else kind(v)
    return RNOArch(**kw)


def load_surrogate(path: str | os.PathLike, device: str | torch.device = "cpu") -> Tuple[RNO, Dict[str, Any]]:
    """Load (model in float64 eval mode on ``device``, card) from a directory or card path."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    directory, cpath = card_paths(path)
    card = read_card(cpath)
    arch_d = _get(card, cpath, "architecture")
    for key in ("k", "f_hidden", "g_hidden", "activation"):  # the rest has defaults (older cards lack them)
        _get(card, cpath, "architecture", key)
    try:
        arch = _arch(arch_d)
        arch.validate()
    except (TypeError, ValueError) as err:
        raise UserError(f"{cpath}: incompatible surrogate architecture ({err})") from None
    if "k" in card and card["k"] != arch.k:  # the card repeats k at its top level, for readers
        raise UserError(f"{cpath}: inconsistent surrogate card (k = {card['k']!r}, architecture.k = {arch.k})")
    norm = _get(card, cpath, "normalization")
    wname = _get(card, cpath, "weights_file")
    if not isinstance(wname, str) or Path(wname).name != wname:
        raise UserError(f"{cpath}: weights_file must be a plain file name next to the card, got {wname!r}")
    wpath = directory / wname
    if not wpath.is_file():
        raise UserError(f"{wpath}: surrogate weights file not found")
    data = wpath.read_bytes()
    if hashlib.sha256(data).hexdigest() != _get(card, cpath, "weights_sha256"):
        raise UserError(f"{wpath}: sha256 does not match {cpath.name} (weights modified or corrupt)")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise UserError(f"{wpath}: corrupt safetensors file ({err})") from None
    try:
        model = RNO(arch, float(norm["strain_scale"]), float(norm["rate_scale"]), float(norm["stress_scale"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{cpath}: invalid normalization ({err})") from None
    model = model.to(torch.float64)
    try:
        model.max_substep_strain = float(card.get("integration", {}).get("max_substep_strain", 0.0))
        if not (math.isfinite(model.max_substep_strain) and model.max_substep_strain >= 0):
            raise ValueError(model.max_substep_strain)
    except (AttributeError, TypeError, ValueError) as err:
        raise UserError(f"{cpath}: integration.max_substep_strain must be a number >= 0 ({err})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise UserError(f"{wpath}: tensors do not match the card's architecture "
                        f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'})")
    for name, t in expected.items():
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise UserError(f"{wpath}: tensor '{name}' has shape {tuple(tensors[name].shape)}, "
                            f"the card's architecture needs {tuple(t.shape)}")
    model.load_state_dict({k: v.to(torch.float64) for k, v in tensors.items()})
    model.eval()
    return model.to(torch.device(device)), card
