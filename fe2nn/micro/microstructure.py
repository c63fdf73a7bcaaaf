"""Voxelized periodic polycrystals: grain map + crystal orientations.

A :class:`Microstructure` lives on the unit cube [0, 1)^3 (the RVE size is
irrelevant for a local, size-free constitutive law) discretized by a regular
voxel grid (N1, N2, N3); axis 0 is sample x, axis 1 y, axis 2 z.  Voxel
(i, j, k) has its centre at ((i+0.5)/N1, (j+0.5)/N2, (k+0.5)/N3) and belongs
to grain ``grain_ids[i, j, k]`` whose orientation is the unit quaternion
``orientations[g]`` = (w, x, y, z), crystal -> sample (fe2nn.mandel convention).

Example::

    ms = Microstructure.voronoi(20, 16, seed=1)          # 16^3 voxels, random texture
    ms.write_vti("rve.vti"); ms.save("rve.h5")
    q_vox = ms.voxel_orientations()                       # (16**3, 4), C order of grain_ids
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from fe2nn import mandel
from fe2nn.io_utils import atomic_path, pyplot, save_figure

FORMAT = "fe2nn-microstructure-1"


def _as_grid(grid) -> Tuple[int, int, int]:
    g = (grid,) * 3 if np.isscalar(grid) else tuple(grid)
    if len(g) != 3 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in g):
        raise ValueError(f"grid must be an integer or three integers (N1, N2, N3), got {grid!r}")
    if any(x <= 0 for x in g):
        raise ValueError(f"grid sizes must be positive, got {tuple(int(x) for x in g)}")
    return tuple(int(x) for x in g)


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """n rotations uniformly distributed on SO(3) (Shoemake 1992), quaternions (n, 4), w >= 0."""
    u1, u2, u3 = rng.random((3, n))
    a, b = np.sqrt(1.0 - u1), np.sqrt(u1)
    q = np.stack([a * np.sin(2 * np.pi * u2), a * np.cos(2 * np.pi * u2),
                  b * np.sin(2 * np.pi * u3), b * np.cos(2 * np.pi * u3)], axis=1)
    q[q[:, 0] < 0] *= -1.0
    return q


def _quat_mul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = np.moveaxis(p, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(q, -1, 0)
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                     w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=-1)


def fibre_quaternions(n: int, direction: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """n orientations with crystal ``direction`` parallel to sample z, uniform rotation about z."""
    d = np.asarray(direction, float)
    if d.shape != (3,) or not np.isfinite(d).all() or np.linalg.norm(d) == 0:
        raise ValueError(f"fibre direction must be three numbers, not all zero, got {direction!r}")
    d = d / np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(d, z)
    s, c = np.linalg.norm(axis), d @ z
    if s < 1e-14:
        q0 = np.array([1.0, 0, 0, 0]) if c > 0 else np.array([0.0, 1.0, 0, 0])
    else:
        ang = math.atan2(s, c)
        q0 = np.array([math.cos(ang / 2), *(math.sin(ang / 2) * axis / s)])
    psi = 2 * np.pi * rng.random(n)
    qz = np.stack([np.cos(psi / 2), 0 * psi, 0 * psi, np.sin(psi / 2)], axis=1)
    q = _quat_mul(qz, np.broadcast_to(q0, (n, 4)))
    q[q[:, 0] < 0] *= -1.0
    return q


def _parse_orientations(spec, n_grains: int, rng: np.random.Generator) -> np.ndarray:
    if spec is None or (isinstance(spec, str) and spec == "random"):
        return random_quaternions(n_grains, rng)
    if isinstance(spec, str):
        if spec.startswith("fibre"):
            digits = spec[len("fibre"):].lstrip(":").strip()
            try:
                direction = ([float(x) for x in digits.split(",")] if "," in digits
                             else [float(x) for x in re.findall(r"-?\d", digits)])
            except ValueError:
                direction = None
            if direction and "," not in digits and "".join(re.findall(r"-?\d", digits)) != digits:
                direction = None
            if not direction or len(direction) != 3:
                raise ValueError(f"fibre texture must look like 'fibre:111' or 'fibre:1,1,0', got {spec!r}")
            return fibre_quaternions(n_grains, direction, rng)
        raise ValueError(f"orientations must be 'random', 'fibre:hkl' or an array (G, 4), got {spec!r}")
    q = np.asarray(spec.cpu().numpy() if isinstance(spec, torch.Tensor) else spec, dtype=float)
    if q.shape != (n_grains, 4):
        raise ValueError(f"orientations must have shape ({n_grains}, 4), got {q.shape}")
    return q


@dataclass
class Microstructure:
    """Grain map ``grain_ids`` (N1,N2,N3) int64, ``orientations`` (G,4) quaternions, ``seed``."""

    grain_ids: torch.Tensor
    orientations: torch.Tensor
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        ids = self.grain_ids
        ids = torch.from_numpy(np.ascontiguousarray(ids)) if isinstance(ids, np.ndarray) else torch.as_tensor(ids)
        if ids.ndim != 3 or min(ids.shape) <= 0:
            raise ValueError(f"grain_ids must be a non-empty 3-D array (N1, N2, N3), got shape {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError("grain_ids must be integers")
        q = self.orientations
        q = torch.from_numpy(np.asarray(q, dtype=float)) if not isinstance(q, torch.Tensor) else q
        q = q.detach().to("cpu", torch.float64)
        if q.ndim != 2 or q.shape[1] != 4 or q.shape[0] < 1:
            raise ValueError(f"orientations must have shape (G, 4), got {tuple(q.shape)}")
        mandel.quaternion_to_matrix(q)  # raises ValueError on non-unit quaternions
        ids = ids.to("cpu", torch.int64).contiguous()
        if int(ids.min()) < 0 or int(ids.max()) >= q.shape[0]:
            raise ValueError(f"grain ids must lie in [0, {q.shape[0] - 1}] (one orientation per grain), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        self.grain_ids, self.orientations = ids, q

    # -- construction --------------------------------------------------------------------
    @classmethod
    def voronoi(cls, n_grains: int, grid, seed: int = 0,
                orientations: Union[None, str, np.ndarray, torch.Tensor] = None,
                chunk: int = 1 << 16) -> "Microstructure":
        """Periodic Voronoi polycrystal of ``n_grains`` grains on a voxel grid.

        Grain seeds are uniform in the unit cube (numpy Generator(seed)); each
        voxel centre goes to the nearest seed under the minimum-image periodic
        distance (exact for the cube: each axis is minimized independently),
        computed in chunks of ``chunk`` voxels.  ``orientations``: None or
        "random" (uniform on SO(3)), "fibre:hkl" (crystal <hkl> along sample z,
        random about it) or an array (G, 4).
        """
        N = _as_grid(grid)
        if isinstance(n_grains, bool) or not isinstance(n_grains, (int, np.integer)) or n_grains <= 0:
            raise ValueError(f"n_grains must be a positive integer, got {n_grains!r}")
        nvox = N[0] * N[1] * N[2]
        if n_grains > nvox:
            raise ValueError(f"n_grains = {n_grains} exceeds the number of voxels {nvox} of grid {N}")
        rng = np.random.default_rng(seed)
        points = rng.random((int(n_grains), 3))
        q = _parse_orientations(orientations, int(n_grains), rng)
        ids = voronoi_ids(points, N, chunk)
        return cls(ids, torch.from_numpy(q), seed)

    # -- queries -------------------------------------------------------------------------
    @property
    def grid(self) -> Tuple[int, int, int]:
        return tuple(self.grain_ids.shape)

    @property
    def n_grains(self) -> int:
        return int(self.orientations.shape[0])

    def voxel_orientations(self) -> torch.Tensor:
        """Quaternion of every voxel, (N1*N2*N3, 4), in C order of ``grain_ids.reshape(-1)``."""
        return self.orientations[self.grain_ids.reshape(-1)]

    def grain_fractions(self) -> torch.Tensor:
        """Volume fraction of each grain, (G,), sums to 1."""
        counts = torch.bincount(self.grain_ids.reshape(-1), minlength=self.n_grains)
        return counts.to(torch.float64) / self.grain_ids.numel()

    def hash(self) -> str:
        """Stable SHA-256 of grid, grain map and orientations (hex)."""
        h = hashlib.sha256()
        h.update(FORMAT.encode())
        h.update(np.asarray(self.grid, dtype="<i8").tobytes())
        h.update(self.grain_ids.numpy().astype("<i8").tobytes())
        h.update(self.orientations.numpy().astype("<f8").tobytes())
        return h.hexdigest()

    # -- I/O -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write HDF5 (datasets grain_ids, orientations; attrs format, seed, hash), atomically."""
        import h5py

        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["seed"] = -1 if self.seed is None else int(self.seed)
                f.attrs["hash"] = self.hash()
                f.create_dataset("grain_ids", data=self.grain_ids.numpy(), compression="gzip")
                f.create_dataset("orientations", data=self.orientations.numpy())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Microstructure":
        """Read a file written by :meth:`save` (ValueError if it is not one)."""
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise ValueError(f"{path}: not a fe2nn microstructure file")
                seed = int(f.attrs["seed"])
                ms = cls(f["grain_ids"][...], f["orientations"][...], None if seed < 0 else seed)
        except (OSError, KeyError) as err:
            raise ValueError(f"{path}: cannot read microstructure ({err})") from None
        return ms

    def write_vti(self, path: str | os.PathLike) -> None:
        """VTK XML ImageData (.vti, ParaView) with cell data grain_id and orientation, atomically."""
        N = self.grid
        spacing = " ".join(repr(1.0 / n) for n in N)

        def b64(arr: np.ndarray) -> str:
            raw = np.ascontiguousarray(arr).tobytes()
            return base64.b64encode(np.uint32(len(raw)).tobytes() + raw).decode("ascii")

        ids = self.grain_ids.numpy().ravel(order="F").astype("<i8")  # VTK: x fastest
        quat = self.voxel_orientations().numpy().reshape(N + (4,)).transpose(2, 1, 0, 3).reshape(-1, 4)
        text = (
            '<?xml version="1.0"?>\n'
            '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt32">\n'
            f'  <ImageData WholeExtent="0 {N[0]} 0 {N[1]} 0 {N[2]}" Origin="0 0 0" Spacing="{spacing}">\n'
            f'    <Piece Extent="0 {N[0]} 0 {N[1]} 0 {N[2]}">\n'
            '      <CellData Scalars="grain_id">\n'
            f'        <DataArray type="Int64" Name="grain_id" format="binary">{b64(ids)}</DataArray>\n'
            '        <DataArray type="Float64" Name="orientation" NumberOfComponents="4" format="binary">'
            f'{b64(quat.astype("<f8"))}</DataArray>\n'
            '      </CellData>\n'
            '    </Piece>\n'
            '  </ImageData>\n'
            '</VTKFile>\n'
        )
        with atomic_path(path) as tmp:
            tmp.write_text(text)

    def plot_slice(self, path: str | os.PathLike, axis: int = 2, index: Optional[int] = None) -> None:
        """PNG of the grain map on the slice ``index`` normal to ``axis``, coloured by grain."""
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
        n = self.grid[axis]
        index = n // 2 if index is None else int(index)
        if not 0 <= index < n:
            raise ValueError(f"slice index must lie in [0, {n - 1}], got {index}")
        plt = pyplot()

        sl = np.take(self.grain_ids.numpy(), index, axis=axis)
        rest = [a for a in range(3) if a != axis]
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(sl.T, origin="lower", cmap="tab20", interpolation="nearest",
                  extent=(0, 1, 0, 1), vmin=0, vmax=max(self.n_grains - 1, 1))
        names = "xyz"
        ax.set_xlabel(names[rest[0]])
        ax.set_ylabel(names[rest[1]])
        ax.set_title(f"{self.n_grains} grains, {names[axis]} = {(index + 0.5) / n:.3f}")
        fig.tight_layout()
        save_figure(fig, path, dpi=100)


def voronoi_ids(points: np.ndarray, grid: Tuple[int, int, int], chunk: int = 1 << 16) -> np.ndarray:
    """Nearest-seed (periodic minimum image) grain id of each voxel centre, (N1, N2, N3) int64."""
    N = _as_grid(grid)
    s = torch.as_tensor(points, dtype=torch.float64)
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in N]
    X = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    out = torch.empty(X.shape[0], dtype=torch.int64)
    for start in range(0, X.shape[0], chunk):  # chunks bound the (chunk, G) distance memory
        d = X[start:start + chunk, None, :] - s[None, :, :]
        d = d - torch.round(d)
        out[start:start + chunk] = torch.argmin((d * d).sum(-1), dim=1)
    return out.reshape(N).numpy()
