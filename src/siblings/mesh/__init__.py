"""Simulation-ready geometry from label maps: surfaces and tetrahedral meshes.

:mod:`siblings.mesh.surfaces` builds the multi-label surface of a map in world mm (NumPy
only); :mod:`siblings.mesh.volume` fills it with tagged tetrahedra (TetGen, the optional
``mesh`` extra); :mod:`siblings.mesh.formats` turns either into file contents (bytes or
text: the pipelines write them). Nothing here writes a file.
"""
