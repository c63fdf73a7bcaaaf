"""TOML configs -> validated dataclasses; every user error becomes one clear line.

Each config section is a dataclass.  Field metadata may carry ``doc`` (what is
expected, used in messages) and ``check`` (a callable returning an error string
or None).  :func:`parse` checks for unknown keys (with a "did you mean"), missing
keys, types and checks, recursing into nested dataclasses, and raises
:class:`fe2nn.errors.UserError` naming the file and the dotted key.

Example::

    @dataclass
    class Material:
        E: float = field(metadata=dict(doc="Young's modulus [Pa]", check=positive))
        nu: float = field(default=0.3, metadata=dict(check=in_range(-1, 0.5, closed=False)))
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from fe2nn.errors import UserError


# -- file loading ------------------------------------------------------------------------
def load_toml(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Read a TOML file; a missing/unreadable/invalid file is a UserError naming it.

    ``overrides``: ``KEY=VALUE`` strings (the ``--set`` option of the commands), applied in order
    with :func:`apply_overrides` after reading, as if the file said so."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except PermissionError:
        raise UserError(f"{p}: config file is not readable") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{p}: invalid TOML ({err})") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: config file is not UTF-8 text") from None
    return apply_overrides(data, overrides, str(p))


# -- command-line overrides --------------------------------------------------------------
OVERRIDE_HELP = ("set a config key, as if the file said so (repeatable): a dotted key and a TOML value, "
                 "e.g. --set material.model=rve --set load.steps=48; an entry of an array (of tables) by its "
                 "index from 0, e.g. --set 'dirichlet[1].x=1e-4'; a value that is not TOML is taken as "
                 "a string, and paths stay relative to the config file's directory")

#: one part of a --set key: a name with optional indices, ``dirichlet[1]``, ``a[0][2]``
_KEY_PART = re.compile(r"^([^.\[\]]+)((?:\[\d+\])*)$")


def add_override_argument(ap) -> None:
    """Add ``--set KEY=VALUE`` (repeatable; ``args.overrides``) to an argparse parser."""
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help=OVERRIDE_HELP)


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"a.b[1].c=VALUE"`` -> (["a", "b", 1, "c"], value): names, and indices (from 0) into arrays.
    The value is read as a TOML value (``48``, ``1e-3``, ``true``, ``[1, 2]``, ``{n = 1}``,
    ``"text"``); anything else is the string itself."""
    key, sep, raw = text.partition("=")
    names = [k.strip() for k in key.split(".")]
    matches = [_KEY_PART.match(k) for k in names]
    if not sep or not all(names) or not all(matches):
        raise UserError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set material.model=rve "
                        "or --set 'dirichlet[0].x=0'")
    parts: list[str | int] = []
    for m in matches:
        parts.append(m.group(1).strip())
        parts += [int(i) for i in re.findall(r"\d+", m.group(2))]
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def _key_text(parts: Sequence[str | int]) -> str:
    """["a", "b", 1, "c"] -> "a.b[1].c"."""
    return "".join(f"[{p}]" if isinstance(p, int) else ("." if i else "") + p for i, p in enumerate(parts))


def apply_overrides(data: dict, overrides: Sequence[str], file: str = "<config>") -> dict:
    """``data`` with each ``KEY=VALUE`` of ``overrides`` set (missing tables are created, array
    entries must exist); the input is not modified.  A key whose parent is not a table, or an
    index beyond its array, is a UserError naming it."""
    if not overrides:
        return data
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(parts):
            where, last = _key_text(parts[:i]), i == len(parts) - 1
            if isinstance(part, int):
                if not isinstance(node, list):
                    raise UserError(f"--set {text!r}: '{where}' in {file} is not an array "
                                    f"(it is {type(node).__name__}), so it has no entry [{part}]")
                if part >= len(node):
                    has = f"has {len(node)} entries (indices 0 to {len(node) - 1})" if node else "has no entries"
                    raise UserError(f"--set {text!r}: '{where}' in {file} {has}, not [{part}]")
            elif not isinstance(node, dict):
                kind = "an array: give an index, e.g. " + f"'{where}[0].{part}'" if isinstance(node, list) \
                    else f"it is {type(node).__name__}"
                raise UserError(f"--set {text!r}: '{where}' in {file} is not a table ({kind}), "
                                f"so it has no key '{part}'")
            if last:
                node[part] = value
            elif isinstance(part, int):
                node = node[part]
            else:
                node = node.setdefault(part, {} if isinstance(parts[i + 1], str) else [])
    return out


# -- reusable checks ---------------------------------------------------------------------
def positive(v) -> Optional[str]:
    return None if v > 0 else "must be > 0"


def non_negative(v) -> Optional[str]:
    return None if v >= 0 else "must be >= 0"


def in_range(lo: float, hi: float, closed: bool = True) -> Callable[[Any], Optional[str]]:
    def check(v):
        ok = lo <= v <= hi if closed else lo < v < hi
        br = "[]" if closed else "()"
        return None if ok else f"must lie in {br[0]}{lo}, {hi}{br[1]}"

    return check


def one_of(*choices) -> Callable[[Any], Optional[str]]:
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


# -- parsing -----------------------------------------------------------------------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false", dict: "a table"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value, tp, key: str, file: str):
    origin = typing.get_origin(tp)
    bad = UserError(f"{file}: key '{key}' must be {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for a in args:
            try:
                return _convert(value, a, key, file)
            except UserError:
                continue
        raise bad
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return parse(tp, value, file, key)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise bad
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        out = [_convert(v, arg, f"{key}[{i}]", file) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def parse(cls, data: dict, file: str = "<config>", where: str = ""):
    """Build dataclass ``cls`` from ``data``; raise UserError on any problem."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise UserError(
                f"{file}: unknown key '{prefix}{key}'{hint}; expected one of: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        doc = f.metadata.get("doc")
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{file}: missing key '{key}'" + (f" ({doc})" if doc else ""))
            continue
        value = _convert(data[name], hints[name], key, file)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            msg = check(value)
            if msg:
                raise UserError(f"{file}: key '{key}' = {data[name]!r} {msg}" + (f" ({doc})" if doc else ""))
        kwargs[name] = value
    obj = cls(**kwargs)
    post = getattr(obj, "validate", None)
    if callable(post):
        try:
            post()
        except ValueError as err:
            raise UserError(f"{file}: {prefix.rstrip('.') or 'config'}: {err}") from None
    return obj


def resolve_path(base_file: str | os.PathLike, path: str) -> Path:
    """Interpret ``path`` relative to the directory of the config file."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(base_file).resolve().parent / p).resolve()
