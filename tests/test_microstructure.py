"""Periodic Voronoi microstructures: periodicity, reproducibility, textures, I/O and bad input."""
from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from fe2nn import mandel
from fe2nn.micro.microstructure import Microstructure, voronoi_ids


def test_voronoi_is_periodic():
    N = (12, 10, 8)
    rng = np.random.default_rng(3)
    pts = rng.random((9, 3))
    ids = voronoi_ids(pts, N)
    shift = np.array([5, -3, 2])
    ids_shifted = voronoi_ids((pts + shift / np.array(N)) % 1.0, N)
    assert np.array_equal(ids_shifted, np.roll(ids, tuple(shift), axis=(0, 1, 2)))
    # nearest-seed property against a brute-force search over the 27 periodic images
    X = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / n for n in N], indexing="ij"), -1).reshape(-1, 3)
    images = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], float)
    d = np.linalg.norm(X[:, None, None, :] - pts[None, :, None, :] - images[None, None], axis=-1).min(-1)
    assert np.array_equal(ids.reshape(-1), d.argmin(1))


def test_seed_reproducibility_fractions_and_hash():
    a = Microstructure.voronoi(10, 12, seed=7)
    b = Microstructure.voronoi(10, 12, seed=7)
    c = Microstructure.voronoi(10, 12, seed=8)
    assert torch.equal(a.grain_ids, b.grain_ids) and torch.equal(a.orientations, b.orientations)
    assert a.hash() == b.hash() and a.hash() != c.hash()
    f = a.grain_fractions()
    assert f.shape == (10,) and float(f.sum()) == pytest.approx(1.0, abs=1e-15)
    assert torch.equal(torch.bincount(a.grain_ids.reshape(-1), minlength=10).double() / 12**3, f)
    v = a.voxel_orientations()
    assert v.shape == (12**3, 4)
    assert torch.equal(v[5 * 144 + 3 * 12 + 1], a.orientations[a.grain_ids[5, 3, 1]])
    assert a.grid == (12, 12, 12) and a.n_grains == 10


def test_textures():
    ms = Microstructure.voronoi(50, 8, seed=1, orientations="fibre:110")
    R = mandel.quaternion_to_matrix(ms.orientations)
    d = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5
    assert torch.allclose(R @ d, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(50, 3), atol=1e-12)
    q = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
    ms2 = Microstructure.voronoi(2, 4, seed=0, orientations=q)
    assert torch.equal(ms2.orientations, q)
    rnd = Microstructure.voronoi(3, 4, seed=0)
    assert torch.allclose(rnd.orientations.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_save_load_roundtrip_vti_and_png(tmp_path):
    ms = Microstructure.voronoi(6, (6, 5, 4), seed=2)
    ms.save(tmp_path / "ms.h5")
    back = Microstructure.load(tmp_path / "ms.h5")
    assert torch.equal(back.grain_ids, ms.grain_ids) and torch.equal(back.orientations, ms.orientations)
    assert back.seed == 2 and back.hash() == ms.hash()

    ms.write_vti(tmp_path / "ms.vti")
    root = ET.parse(tmp_path / "ms.vti").getroot()
    assert root.tag == "VTKFile" and root.get("type") == "ImageData"
    img = root.find("ImageData")
    assert img.get("WholeExtent") == "0 6 0 5 0 4"
    arrays = {a.get("Name"): a for a in img.iter("DataArray")}
    raw = base64.b64decode(arrays["grain_id"].text)
    nbytes = np.frombuffer(raw[:4], "<u4")[0]
    ids = np.frombuffer(raw[4:], "<i8")
    assert nbytes == 6 * 5 * 4 * 8 and ids.size == 120
    assert np.array_equal(ids.reshape(4, 5, 6).transpose(2, 1, 0), ms.grain_ids.numpy())  # x fastest
    assert int(arrays["orientation"].get("NumberOfComponents")) == 4
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries

    ms.plot_slice(tmp_path / "slice.png", axis=1, index=2)
    assert (tmp_path / "slice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="slice index"):
        ms.plot_slice(tmp_path / "bad.png", axis=1, index=5)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5"):
        Microstructure.load(tmp_path / "junk.h5")


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_grains=0, grid=4), "n_grains"),
    (dict(n_grains=-3, grid=4), "n_grains"),
    (dict(n_grains=2.5, grid=4), "n_grains"),
    (dict(n_grains=100, grid=4), "exceeds the number of voxels"),
    (dict(n_grains=2, grid=0), "positive"),
    (dict(n_grains=2, grid=(4, 4)), "three integers"),
    (dict(n_grains=2, grid=(4, -1, 4)), "positive"),
    (dict(n_grains=2, grid=4, orientations=[[1.0, 0.2, 0, 0], [1.0, 0, 0, 0]]), "unit norm"),
    (dict(n_grains=2, grid=4, orientations=[[1.0, 0, 0, 0]]), "shape"),
    (dict(n_grains=2, grid=4, orientations="cube"), "random"),
    (dict(n_grains=2, grid=4, orientations="fibre:1x1"), "fibre"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Microstructure.voronoi(seed=0, **kwargs)


def test_bad_direct_construction():
    with pytest.raises(ValueError, match="grain ids must lie"):
        Microstructure(np.full((2, 2, 2), 3), np.array([[1.0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="3-D"):
        Microstructure(np.zeros((2, 2), dtype=int), np.array([[1.0, 0, 0, 0]]))
