"""Dataset files: validation, content hash, torch loaders, fe2nn inspect."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import run_cli
from fe2nn.data import generate as G
from fe2nn.data.dataset import FIELDS, content_hash, load_dataset, metadata, read_arrays, recipe_hash
from fe2nn.errors import UserError

CONFIG = """
output = "d.h5"
n_steps = 12
seed = 9
batch_size = 4
[rve]
solver = "j2"
options = {E = 200e9, nu = 0.3, sigma_y = 250e6, H_iso = 2e9}
[paths.random_walk]
count = 3
[paths.cyclic]
count = 3
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    cfg = d / "gen.toml"
    cfg.write_text(CONFIG)
    G.generate(G.load_config(cfg), str(cfg), progress=False)
    return d / "d.h5"


def test_load_dataset_shapes_and_splits(dataset):
    s = load_dataset(dataset, split="all")
    assert len(s) == 6
    assert s.strain.shape == (6, 13, 6) and s.stress.shape == (6, 13, 6) and s.time.shape == (6, 13)
    assert s.strain.dtype == torch.float64 and s.family.dtype == torch.int64
    assert torch.equal(s.dt, s.time[:, 1:] - s.time[:, :-1]) and (s.dt > 0).all()
    assert s.family_names == ("random_walk", "monotonic", "cyclic", "reversal_walk")  # every family, in code order
    assert s.family.tolist() == [0, 0, 0, 2, 2, 2]
    assert len(load_dataset(dataset, split="train")) == 6 and len(load_dataset(dataset, split="rejected")) == 0
    f32 = load_dataset(dataset, dtype=torch.float32)
    assert f32.stress.dtype == torch.float32
    meta = metadata(dataset)
    assert meta["paths"]["seed"] == 9 and meta["paths"]["n_steps"] == 12
    assert meta["material"]["law"] == "j2"
    with pytest.raises(ValueError):
        load_dataset(dataset, split="test")


def test_content_hash_is_stable_and_sensitive(dataset, tmp_path):
    h = content_hash(dataset)
    assert h == content_hash(dataset) and len(h) == 64 and load_dataset(dataset).content_hash == h
    copy = tmp_path / "copy.h5"
    shutil.copy(dataset, copy)
    with h5py.File(copy, "r+") as fh:
        v = fh["stress"][2, 5, 1]
        fh["stress"][2, 5, 1] = np.nextafter(v, np.inf)
    with pytest.raises(UserError, match="content hash mismatch"):
        read_arrays(copy)
    with h5py.File(copy, "r+") as fh:
        del fh.attrs["content_hash"]
    assert content_hash(copy) != h  # one ulp changes the hash


def _edited_copy(src, dst, edit):
    """A copy of a dataset with ``edit(h5py.File)`` applied and the stored content hash dropped."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as fh:
        edit(fh)
        del fh.attrs["content_hash"]
    return dst


def _nudge(name, index):
    def edit(fh):  # one ulp, as another CPU's exp/log or BLAS may round
        v = fh[name][index]
        fh[name][index] = np.nextafter(v, np.inf)
    return edit


def test_recipe_hash_ignores_rounding_but_not_what_the_data_is(dataset, tmp_path):
    """The recipe hash identifies a dataset regenerated elsewhere (values differing in their last
    bits) and changes with the paths, the RVE, the acceptance of a sample or the shapes."""
    h = recipe_hash(dataset)
    assert h is not None and len(h) == 64 and h == recipe_hash(dataset)
    for i, (name, index) in enumerate([("stress", (2, 5, 1)), ("strain", (0, 3, 2)), ("time", (4, 7))]):
        copy = _edited_copy(dataset, tmp_path / f"ulp{i}.h5", _nudge(name, index))
        assert content_hash(copy) != content_hash(dataset) and recipe_hash(copy) == h, name

    def attr(key, change):
        def edit(fh):
            d = json.loads(fh.attrs[key])
            change(d)
            fh.attrs[key] = json.dumps(d)
        return edit

    def unchanged(d):  # the device and batch size change how, not what, is computed
        d["device"], d["batch_size"] = "cuda", 1

    copy = _edited_copy(dataset, tmp_path / "how.h5", attr("solver", unchanged))
    assert recipe_hash(copy) == h
    other = {
        "paths": attr("paths", lambda d: d.update(seed=d["seed"] + 1)),
        "material": attr("material", lambda d: d.update(sigma_y=d["sigma_y"] * 1.01)),
        "solver": attr("solver", lambda d: d.update(max_substeps=d["max_substeps"] + 1)),
        "accepted": lambda fh: fh["accepted"].__setitem__(1, False),
    }
    for name, edit in other.items():
        assert recipe_hash(_edited_copy(dataset, tmp_path / f"{name}.h5", edit)) != h, name

    def strip(fh):  # not written by fe2nn generate: no recipe
        del fh.attrs["paths"]
    assert recipe_hash(_edited_copy(dataset, tmp_path / "bare.h5", strip)) is None


def test_truncated_and_foreign_files_are_reported(dataset, tmp_path):
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(dataset.read_bytes()[:4000])
    with pytest.raises(UserError, match="trunc.h5"):
        load_dataset(trunc)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as fh:
        fh["x"] = np.zeros(3)
    with pytest.raises(UserError, match="not an fe2nn dataset"):
        read_arrays(other)
    partial = tmp_path / "partial.h5"
    shutil.copy(dataset, partial)
    with h5py.File(partial, "r+") as fh:
        del fh["hill_mandel"]
    with pytest.raises(UserError, match="missing hill_mandel"):
        read_arrays(partial)
    bad = tmp_path / "bad_shape.h5"
    shutil.copy(dataset, bad)
    with h5py.File(bad, "r+") as fh:
        del fh["time"], fh.attrs["content_hash"]
        fh["time"] = np.zeros((6, 12))
    with pytest.raises(UserError, match="'time' has shape"):
        read_arrays(bad)
    with pytest.raises(UserError, match="not found"):
        read_arrays(tmp_path / "missing.h5")


def test_inspect_cli(dataset, tmp_path):
    proc = run_cli("inspect", str(dataset), "--plots", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "6 samples x 12 increments" in out and "random_walk 3" in out and "cyclic 3" in out
    assert f"content sha256 {content_hash(dataset)[:16]}, recipe sha256 {recipe_hash(dataset)[:16]}" in out
    assert "accepted: 6; rejected: 0 not converged, 0 Hill-Mandel" in out
    for name in ("strain.png", "stress.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    trunc = tmp_path / "t.h5"
    trunc.write_bytes(dataset.read_bytes()[:3000])
    proc = run_cli("inspect", str(trunc))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(trunc) in lines[0]


def test_inspect_ranges_match_arrays(dataset):
    from fe2nn.data.inspect import summarize

    A, attrs = read_arrays(dataset)
    s = summarize(A, attrs)
    assert s["strain"][0] == (A["strain"][..., 0].min(), A["strain"][..., 0].max())
    dt = np.diff(A["time"], axis=1)
    assert s["dt"][0] == dt.min() and s["dt"][2] == dt.max()
    rate = np.diff(A["strain"][..., 3], axis=1) / dt
    assert s["strain_rate"][3] == (rate.min(), rate.max())
    assert set(FIELDS) <= set(A)


def test_rve_identity_ignores_device_and_batch_size():
    """Data sets generated with other batch sizes or devices are of the same RVE (they can be trained
    on together); other solver options or crystal parameters are not."""
    from fe2nn.data.dataset import rve_identity

    base = {"material": {"C11": 1.0}, "microstructure": {"n_grains": 30, "seed": 7, "hash": "ab"},
            "solver": {"solver": "taylor", "options": {}, "max_substeps": 16, "device": "auto", "batch_size": 40}}
    other = {**base, "solver": {**base["solver"], "device": "cuda", "batch_size": 32},
             "microstructure": {**base["microstructure"], "hash": "cd"}}
    assert rve_identity(other) == rve_identity(base)
    assert rve_identity({**base, "solver": {**base["solver"], "options": {"tol": 1e-9}}}) != rve_identity(base)
    assert rve_identity({**base, "material": {"C11": 2.0}}) != rve_identity(base)
    from_file = {**base, "microstructure": {"file": "m.h5", "hash": "ab"}}
    assert rve_identity({**from_file, "microstructure": {"file": "m.h5", "hash": "cd"}}) != rve_identity(from_file)
