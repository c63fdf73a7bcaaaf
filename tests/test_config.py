"""The config layer turns every user mistake into one clear line naming the key."""
from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from fe2nn.config import in_range, load_toml, parse, positive
from fe2nn.errors import UserError


@dataclass
class Mat:
    E: float = field(metadata=dict(doc="Young's modulus [Pa]", check=positive))
    nu: float = field(default=0.3, metadata=dict(check=in_range(-1.0, 0.5, closed=False)))


@dataclass
class Cfg:
    material: Mat
    steps: int = 10
    tags: List[str] = field(default_factory=list)
    note: Optional[str] = None


def test_parse_valid_and_defaults():
    cfg = parse(Cfg, {"material": {"E": 200e9}, "tags": ["a"]}, "c.toml")
    assert cfg.material.E == 200e9 and cfg.material.nu == 0.3 and cfg.steps == 10 and cfg.tags == ["a"]


@pytest.mark.parametrize(
    "data,expect",
    [
        ({"material": {"E": 1.0}, "stpes": 3}, "unknown key 'stpes' (did you mean 'steps'?)"),
        ({"material": {"E": 1.0, "mu": 0.2}}, "unknown key 'material.mu' (did you mean 'material.nu'?)"),
        ({"material": {}}, "missing key 'material.E' (Young's modulus [Pa])"),
        ({"material": {"E": -5.0}}, "key 'material.E' = -5.0 must be > 0"),
        ({"material": {"E": 1.0, "nu": 0.5}}, "key 'material.nu' = 0.5 must lie in (-1.0, 0.5)"),
        ({"material": {"E": "big"}}, "key 'material.E' must be a number, got 'big'"),
        ({"material": {"E": 1.0}, "steps": 2.5}, "key 'steps' must be an integer"),
        ({"material": {"E": 1.0}, "steps": True}, "key 'steps' must be an integer"),
    ],
)
def test_parse_errors_are_one_line_naming_the_key(data, expect):
    with pytest.raises(UserError) as err:
        parse(Cfg, data, "c.toml")
    msg = str(err.value)
    assert msg.startswith("c.toml: ") and expect in msg and "\n" not in msg


def test_load_toml_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [1, \n")
    with pytest.raises(UserError, match="invalid TOML"):
        load_toml(bad)


def test_cli_unknown_command_is_one_line():
    from conftest import run_cli

    proc = run_cli("frobnicate")
    assert proc.returncode != 0
    assert proc.stderr.strip() == "fe2nn: error: unknown command 'frobnicate' (expected one of: solve, generate, inspect, train, evaluate, validate)"
