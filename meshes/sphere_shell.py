"""One octant (x, y, z >= 0) of a thick-walled sphere a <= r <= b, tetrahedra.

Physical groups: surfaces ``inner`` (1, r = a), ``outer`` (2, r = b),
``xsym`` (3, x = 0), ``ysym`` (4, y = 0), ``zsym`` (5, z = 0); volume ``shell`` (10).

    python meshes/sphere_shell.py --a 1 --b 2 --h 0.25 --out meshes/sphere_shell.msh
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gmsh  # noqa: E402

from _common import add_group, finish, start  # noqa: E402


def build(out: str, a: float = 1.0, b: float = 2.0, h: float = 0.25) -> str:
    start("sphere_shell")
    occ = gmsh.model.occ
    outer = occ.addSphere(0, 0, 0, b)
    inner = occ.addSphere(0, 0, 0, a)
    shell, _ = occ.cut([(3, outer)], [(3, inner)])
    box = occ.addBox(0, 0, 0, 2 * b, 2 * b, 2 * b)
    octant, _ = occ.intersect(shell, [(3, box)])
    occ.synchronize()
    groups = {"inner": [], "outer": [], "xsym": [], "ysym": [], "zsym": []}
    tol = 1e-4 * b
    for dim, tag in gmsh.model.getEntities(2):
        x, y, z = occ.getCenterOfMass(dim, tag)
        x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(dim, tag)
        if x1 < tol:
            groups["xsym"].append(tag)
        elif y1 < tol:
            groups["ysym"].append(tag)
        elif z1 < tol:
            groups["zsym"].append(tag)
        elif math.sqrt(x * x + y * y + z * z) < 0.5 * (a + b):
            groups["inner"].append(tag)
        else:
            groups["outer"].append(tag)
    for i, (name, tags) in enumerate(groups.items(), start=1):
        add_group(2, tags, i, name)
    add_group(3, [t for _, t in octant], 10, "shell")
    finish(out, h)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=float, default=1.0, help="inner radius [m]")
    ap.add_argument("--b", type=float, default=2.0, help="outer radius [m]")
    ap.add_argument("--h", type=float, default=0.25, help="target element size [m]")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "sphere_shell.msh"))
    a = ap.parse_args()
    print(build(a.out, a.a, a.b, a.h))
