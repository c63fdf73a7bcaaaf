"""Quarter of a thick plate with a central circular hole, tetrahedra (3D).

The plate [0,W]x[0,H]x[0,T] (the quarter x, y >= 0 of a 2W x 2H plate, half its
thickness 2T) minus the cylinder x^2 + y^2 < R^2.  Symmetry planes x = 0, y = 0,
z = 0.  The mesh is graded: size ``h`` far away, ``h * refine`` at the hole.

Physical groups: surfaces ``xsym`` (1), ``ysym`` (2), ``zsym`` (3), ``top`` (4, y = H),
``right`` (5, x = W), ``hole`` (6), ``front`` (7, z = T); volume ``plate`` (10).

    python meshes/plate_hole.py --h 0.01 --out meshes/plate_hole.msh
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gmsh  # noqa: E402

from _common import add_group, start  # noqa: E402


def build(out: str, width: float = 0.05, height: float = 0.1, thickness: float = 0.005,
          radius: float = 0.01, h: float = 0.008, refine: float = 0.25, order: int = 1) -> str:
    start("plate_hole")
    occ = gmsh.model.occ
    plate = occ.addBox(0, 0, 0, width, height, thickness)
    hole = occ.addCylinder(0, 0, -thickness, 0, 0, 3 * thickness, radius)
    body, _ = occ.cut([(3, plate)], [(3, hole)])
    occ.synchronize()
    tol = 1e-3 * thickness
    groups = {k: [] for k in ("xsym", "ysym", "zsym", "top", "right", "hole", "front")}
    for dim, tag in gmsh.model.getEntities(2):
        x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(dim, tag)
        if x1 < tol:
            groups["xsym"].append(tag)
        elif y1 < tol:
            groups["ysym"].append(tag)
        elif z1 < tol:
            groups["zsym"].append(tag)
        elif z0 > thickness - tol:
            groups["front"].append(tag)
        elif y0 > height - tol:
            groups["top"].append(tag)
        elif x0 > width - tol:
            groups["right"].append(tag)
        else:
            groups["hole"].append(tag)
    for i, (name, tags) in enumerate(groups.items(), start=1):
        add_group(2, tags, i, name)
    add_group(3, [t for _, t in body], 10, "plate")
    # graded size: fine at the hole, coarse far away
    dist = gmsh.model.mesh.field.add("Distance")
    gmsh.model.mesh.field.setNumbers(dist, "SurfacesList", groups["hole"])
    thr = gmsh.model.mesh.field.add("Threshold")
    gmsh.model.mesh.field.setNumber(thr, "InField", dist)
    gmsh.model.mesh.field.setNumber(thr, "SizeMin", h * refine)
    gmsh.model.mesh.field.setNumber(thr, "SizeMax", h)
    gmsh.model.mesh.field.setNumber(thr, "DistMin", 0.2 * radius)
    gmsh.model.mesh.field.setNumber(thr, "DistMax", 3.0 * radius)
    gmsh.model.mesh.field.setAsBackgroundMesh(thr)
    for opt in ("Mesh.MeshSizeExtendFromBoundary", "Mesh.MeshSizeFromPoints", "Mesh.MeshSizeFromCurvature"):
        gmsh.option.setNumber(opt, 0)
    gmsh.model.mesh.generate(3)
    if order > 1:
        gmsh.model.mesh.setOrder(order)
    gmsh.write(out)
    gmsh.finalize()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.05, help="half width W [m]")
    ap.add_argument("--height", type=float, default=0.1, help="half height H [m]")
    ap.add_argument("--thickness", type=float, default=0.005, help="half thickness T [m]")
    ap.add_argument("--radius", type=float, default=0.01, help="hole radius R [m]")
    ap.add_argument("--h", type=float, default=0.008, help="far-field element size [m]")
    ap.add_argument("--refine", type=float, default=0.25, help="size at the hole / far-field size")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "plate_hole.msh"))
    a = ap.parse_args()
    print(build(a.out, a.width, a.height, a.thickness, a.radius, a.h, a.refine))
