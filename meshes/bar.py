"""Prismatic bar [0,L]x[0,W]x[0,W] of tetrahedra with its six faces tagged.

Physical groups: surfaces ``xmin`` (1), ``xmax`` (2), ``ymin`` (3), ``ymax`` (4),
``zmin`` (5), ``zmax`` (6); volume ``bar`` (10).  Lengths in m.

    python meshes/bar.py --length 1 --width 0.2 --h 0.1 --out meshes/bar.msh
    python meshes/bar.py --hex --h 0.1 --out meshes/bar_hex.msh    # hexahedra
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gmsh  # noqa: E402

from _common import add_group, finish, start, surfaces_where  # noqa: E402


def build(out: str, length: float = 1.0, width: float = 0.2, h: float = 0.1, hex: bool = False) -> str:
    """Write the bar mesh to ``out``; ``hex``: structured hexahedra instead of tetrahedra."""
    start("bar")
    gmsh.model.occ.addBox(0, 0, 0, length, width, width)
    gmsh.model.occ.synchronize()
    eps = 1e-4 * width
    faces = {
        "xmin": lambda x0, y0, z0, x1, y1, z1: x1 < eps,
        "xmax": lambda x0, y0, z0, x1, y1, z1: x0 > length - eps,
        "ymin": lambda x0, y0, z0, x1, y1, z1: y1 < eps,
        "ymax": lambda x0, y0, z0, x1, y1, z1: y0 > width - eps,
        "zmin": lambda x0, y0, z0, x1, y1, z1: z1 < eps,
        "zmax": lambda x0, y0, z0, x1, y1, z1: z0 > width - eps,
    }
    for i, (name, pred) in enumerate(faces.items(), start=1):
        add_group(2, surfaces_where(pred), i, name)
    add_group(3, [t for _, t in gmsh.model.getEntities(3)], 10, "bar")
    if hex:
        for dim, tag in gmsh.model.getEntities(1):
            x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(dim, tag)
            n = max(1, round(max(x1 - x0, y1 - y0, z1 - z0) / h))
            gmsh.model.mesh.setTransfiniteCurve(tag, n + 1)
        for dim, tag in gmsh.model.getEntities(2):
            gmsh.model.mesh.setTransfiniteSurface(tag)
            gmsh.model.mesh.setRecombine(dim, tag)
        for dim, tag in gmsh.model.getEntities(3):
            gmsh.model.mesh.setTransfiniteVolume(tag)
    finish(out, h)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=float, default=1.0)
    ap.add_argument("--width", type=float, default=0.2)
    ap.add_argument("--h", type=float, default=0.1, help="target element size [m]")
    ap.add_argument("--hex", action="store_true", help="structured hexahedra")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "bar.msh"))
    a = ap.parse_args()
    print(build(a.out, a.length, a.width, a.h, a.hex))
