"""Morphological and topological evaluation of label maps and cohorts (SPEC §5)."""

from .topology import component_counts, contact_matrix, topology_checks, tv_percent

__all__ = ["component_counts", "contact_matrix", "topology_checks", "tv_percent"]
