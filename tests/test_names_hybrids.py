"""Hybrid formulas normalise as hybrids: both parents, never the first parent alone."""

from __future__ import annotations

import pytest

from retrieval.flora import normalize_name, species_of


@pytest.mark.parametrize("label", ["Quercus alba x Quercus macrocarpa", "Quercus alba L. × Q. macrocarpa Michx.",
                                   "Quercus alba x macrocarpa"])
def test_a_hybrid_formula_keeps_both_parents(label: str) -> None:
    assert normalize_name(label) == "Quercus alba × Quercus macrocarpa"


def test_a_hybrid_formula_is_not_linked_to_its_first_parent() -> None:
    assert species_of(normalize_name("Salix alba L. x S. fragilis L.")) == "Salix alba × Salix fragilis"
    assert species_of("Mentha × piperita var. citrata") == "Mentha × piperita"  # a nothospecies stays itself
    assert normalize_name("Acorus calamus L. var. angustifolius Schott") == "Acorus calamus var. angustifolius"
