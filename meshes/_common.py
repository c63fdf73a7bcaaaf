"""Shared helpers of the gmsh mesh scripts: tag boundary surfaces by where they lie."""
from __future__ import annotations

import gmsh


def surfaces_where(predicate) -> list[int]:
    """Tags of the model's surfaces whose bounding box satisfies ``predicate(xmin, ymin, zmin, xmax, ymax, zmax)``."""
    out = []
    for dim, tag in gmsh.model.getEntities(2):
        if predicate(*gmsh.model.getBoundingBox(dim, tag)):
            out.append(tag)
    return out


def add_group(dim: int, tags: list[int], tag: int, name: str) -> None:
    if not tags:
        raise RuntimeError(f"no entity found for physical group '{name}'")
    gmsh.model.addPhysicalGroup(dim, tags, tag, name=name)


def finish(out: str, h: float, order: int = 1) -> None:
    """Mesh with target size ``h`` [m], write ``out`` (.msh 4.1) and finalize gmsh."""
    gmsh.option.setNumber("Mesh.CharacteristicLengthMin", h)
    gmsh.option.setNumber("Mesh.CharacteristicLengthMax", h)
    gmsh.model.mesh.generate(3)
    if order > 1:
        gmsh.model.mesh.setOrder(order)
    gmsh.write(out)
    gmsh.finalize()


def start(name: str) -> None:
    gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add(name)
