"""Synthetic RNO training data for the surrogate tests: J2 plasticity driven along random
strain paths, written in the README HDF5 dataset format.  Also checks the helper itself."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

FAMILY_NAMES = ["random_walk", "monotonic", "cyclic"]
J2_PARAMS = dict(E=70e9, nu=0.33, sigma_y=100e6, H_iso=1e9, H_kin=2e9)


def synthetic_paths(n: int, T: int, seed: int, family: str, max_strain: float = 5e-3):
    """Strain paths (n, T+1, 6) [-] and non-uniform times (n, T+1) [s] of one family."""
    rng = np.random.default_rng(seed)
    if family == "random_walk":
        inc = rng.normal(size=(n, T, 6))
        for _ in range(3):  # smooth the increments (correlated walk)
            inc[:, 1:] = 0.6 * inc[:, 1:] + 0.4 * inc[:, :-1]
        path = np.cumsum(inc, axis=1)
        path *= max_strain / np.abs(path).max(axis=(1, 2), keepdims=True)
    else:
        d = rng.normal(size=(n, 1, 6))
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        s = np.linspace(0, 1, T + 1)[1:][None, :, None]
        if family == "monotonic":
            amp = s
        else:
            amp = np.sin(2 * np.pi * rng.uniform(1, 2.5, size=(n, 1, 1)) * s)
        path = max_strain * amp * d
    strain = np.concatenate([np.zeros((n, 1, 6)), path], axis=1)
    dt = rng.uniform(0.5, 1.5, size=(n, T))
    time = np.concatenate([np.zeros((n, 1)), np.cumsum(dt, axis=1)], axis=1)
    return strain, time


def j2_stress(strain: np.ndarray, time: np.ndarray) -> np.ndarray:
    """J2 stress (n, T+1, 6) [Pa] along the paths (rate independent)."""
    from fe2nn.materials.j2 import J2Plasticity

    mat = J2Plasticity(**J2_PARAMS)
    n, T1, _ = strain.shape
    state = mat.initial_state(n)
    out = np.zeros_like(strain)
    for t in range(1, T1):
        sig, _, state = mat.update(torch.from_numpy(strain[:, t].copy()), torch.from_numpy(time[:, t] - time[:, t - 1]), state)
        out[:, t] = sig.numpy()
    return out


def make_dataset(path, counts=None, T: int = 40, seed: int = 0) -> Path:
    """Write a J2 dataset with ``counts`` = {family: n} in the README HDF5 format."""
    counts = counts or {"random_walk": 24, "monotonic": 4, "cyclic": 4}
    S, E, t, fam = [], [], [], []
    for i, (name, n) in enumerate(counts.items()):
        s, tt = synthetic_paths(n, T, seed + 17 * i, name)
        S.append(s)
        t.append(tt)
        E.append(j2_stress(s, tt))
        fam.append(np.full(n, FAMILY_NAMES.index(name)))
    strain, time, stress, family = map(np.concatenate, (S, t, E, fam))
    N = strain.shape[0]
    path = Path(path)
    with h5py.File(path, "w") as f:
        f["strain"], f["stress"], f["time"] = strain, stress, time
        f["hill_mandel"] = np.zeros((N, T))
        f["iterations"] = np.ones((N, T), dtype=np.int32)
        f["converged"] = np.ones(N, dtype=bool)
        f["accepted"] = np.ones(N, dtype=bool)
        f["family"] = family.astype(np.int32)
        f["family"].attrs["family_names"] = FAMILY_NAMES
        f["sample_index"] = np.arange(N, dtype=np.int64)
        f.attrs["format"] = "fe2nn-dataset"
        f.attrs["format_version"] = 1
        f.attrs["material"] = json.dumps({"law": "J2", **J2_PARAMS})
    return path


def test_synthetic_dataset_format_and_physics(tmp_path):
    p = make_dataset(tmp_path / "d.h5", {"random_walk": 3, "cyclic": 2}, T=20)
    from fe2nn.surrogate.train import read_dataset

    ds = read_dataset(p)
    assert ds["strain"].shape == (5, 21, 6) and ds["stress"].shape == (5, 21, 6) and ds["time"].shape == (5, 21)
    assert ds["family_names"] == FAMILY_NAMES and list(ds["family"]) == [0, 0, 0, 2, 2]
    # elastic first increment: sigma = C eps, J2 von Mises never far above yield (hardening bounded)
    from fe2nn import mandel

    C = mandel.isotropic_stiffness(J2_PARAMS["E"], J2_PARAMS["nu"]).numpy()
    small = np.abs(ds["strain"][:, 1]).max() < J2_PARAMS["sigma_y"] / J2_PARAMS["E"] / 3
    if small:
        np.testing.assert_allclose(ds["stress"][:, 1], ds["strain"][:, 1] @ C.T, rtol=1e-10, atol=1.0)
    vm = mandel.von_mises(torch.from_numpy(ds["stress"])).max()
    assert J2_PARAMS["sigma_y"] < vm < 1.5 * J2_PARAMS["sigma_y"]
