"""The encoder families an SPS student can be built from: the per-family table and its helpers.

The table itself lives in the self-contained :mod:`.configuration_sps_family` (an exported folder
carries it), the layer-list helpers in :mod:`.modeling_sps_family`; this module gathers them under
one name for the package. Adding a family is adding a :class:`FamilySpec` row (and a tiny config in
``tests/models/test_sps_families.py``).
"""

from __future__ import annotations

from .configuration_sps_family import FAMILIES, SUPPORTED_FAMILIES, FamilySpec, family_of
from .modeling_sps_family import layer_list, qk_pairs_present, set_layer_list

__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "FamilySpec", "family_of", "layer_list", "qk_pairs_present",
           "set_layer_list"]
