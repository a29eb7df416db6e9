"""The built-in task kinds, one module each; importing a module registers its kind in
:data:`sparsemtl.tasks.base.TASKS`. Adding a kind is one module plus one line here."""

from sparsemtl.tasks.kinds import attribute, depth, edges, normals, segmentation

__all__ = ["attribute", "depth", "edges", "normals", "segmentation"]
