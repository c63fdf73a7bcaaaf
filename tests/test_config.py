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


def test_set_overrides_parse_toml_values_and_fall_back_to_strings():
    from fe2nn.config import parse_override

    assert parse_override("material.model=rve") == (["material", "model"], "rve")
    assert parse_override("load.steps=48") == (["load", "steps"], 48)
    assert parse_override("training.lr = 1e-4") == (["training", "lr"], 1e-4)
    assert parse_override("a.flag=true") == (["a", "flag"], True)
    assert parse_override('a.s="48"') == (["a", "s"], "48")  # quoted: a string
    assert parse_override("m.ms={n_grains = 12, seed = 3}") == (["m", "ms"], {"n_grains": 12, "seed": 3})
    assert parse_override("output.dir=results/a=b") == (["output", "dir"], "results/a=b")  # split at the first =
    assert parse_override("dirichlet[1].x=1e-4") == (["dirichlet", 1, "x"], 1e-4)  # an entry of an array
    assert parse_override("load.factors[2]=0.5") == (["load", "factors", 2], 0.5)
    assert parse_override("a[0][1]=2") == (["a", 0, 1], 2)
    for bad in ("steps", "=3", "a..b=1", ".a=1", "a[x]=1", "a[-1]=1", "a[1=1", "a]1[=1"):
        with pytest.raises(UserError, match="expected KEY=VALUE") as err:
            parse_override(bad)
        assert str(err.value).startswith("--set ")


def test_set_overrides_apply_as_if_the_file_said_so(tmp_path):
    from fe2nn.config import apply_overrides

    data = {"material": {"E": 1.0}, "steps": 3, "bc": [{"x": 0.0}]}
    out = apply_overrides(data, ["material.E=2e9", "steps=5", "new.table.key=1"], "c.toml")
    assert out == {"material": {"E": 2e9}, "steps": 5, "bc": [{"x": 0.0}], "new": {"table": {"key": 1}}}
    assert data == {"material": {"E": 1.0}, "steps": 3, "bc": [{"x": 0.0}]}  # the input is kept
    assert apply_overrides(data, ["steps=1", "steps=2"])["steps"] == 2  # in order: the last one wins
    for bad, words in (["bc.x=1", ("'bc' in c.toml is not a table", "no key 'x'")],
                       ["steps.x=1", ("'steps' in c.toml is not a table",)]):
        with pytest.raises(UserError) as err:
            apply_overrides(data, [bad], "c.toml")
        assert all(w in str(err.value) for w in words), str(err.value)
    # entries of arrays (of tables) by their index from 0
    arr = {"bc": [{"x": 0.0}, {"y": 0.0}], "load": {"f": [0.0, 1.0]}}
    assert apply_overrides(arr, ["bc[1].x=2", "load.f[0]=0.5", "bc[0].x=[1, 2]"]) == \
        {"bc": [{"x": [1, 2]}, {"y": 0.0, "x": 2}], "load": {"f": [0.5, 1.0]}}
    for bad, words in (["bc[2].x=1", ("'bc' in c.toml has 2 entries (indices 0 to 1), not [2]",)],
                       ["load[0]=1", ("'load' in c.toml is not an array", "entry [0]")],
                       ["load.f[1].a=1", ("'load.f[1]' in c.toml is not a table",)],
                       ["new[0]=1", ("'new' in c.toml has no entries",)]):
        with pytest.raises(UserError) as err:
            apply_overrides(arr, [bad], "c.toml")
        assert all(w in str(err.value) for w in words), str(err.value)
    # through load_toml, and the checks of parse see the result with its key
    f = tmp_path / "c.toml"
    f.write_text("steps = 3\n[material]\nE = 1.0\n")
    assert parse(Cfg, load_toml(f, ["material.nu=0.25"]), str(f)).material.nu == 0.25
    with pytest.raises(UserError, match=r"key 'material.nu' = 0.7 must lie in"):
        parse(Cfg, load_toml(f, ["material.nu=0.7"]), str(f))


def test_set_paths_stay_relative_to_the_config(tmp_path):
    from fe2nn.surrogate.train import load_config

    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "train.toml"
    f.write_text('[data]\npath = "a.h5"\n[output]\ndir = "out"\n')
    cfg = load_config(f, ["data.path=../b.h5", "training.lr=1e-4"])
    assert cfg.data.path == str(tmp_path / "b.h5") and cfg.training.lr == 1e-4
    assert cfg.output.dir == str(tmp_path / "sub" / "out")
