"""Model classes -> submission columns (species): the one place that maps between them.

A model scores its classes (classes.json's `classes`); the submission, the test truth and
every reported score are per species, the sample submission's columns (`species`). Usually
the two are the same list. With 01's `classes=species_songtype` (RFCx) a species heard in
several song types is split into one class per (species, songtype) pair (s16_t1, s16_t4),
and a species' score is the max over its classes' scores: a species is present where one
of its song types is. The max commutes with the sigmoid and with the kit's per-class
calibrations (common/calibration.py: a shared positive slope), so the same map serves
logits, probabilities, 0/1 truth and frame tracks.
"""
from __future__ import annotations

import numpy as np

from common import metrics
from common.cli import ConfigError


class SpeciesMap:
    """classes (K) -> species (S <= K) in the submission's column order.

    `species_of` {class: species} (a class absent from it is its own species); `columns` the
    species in submission order (default: the order in which the classes first name them).
    """

    def __init__(self, classes: list, species_of: dict | None = None, columns: list | None = None):
        self.classes = list(classes)
        of = dict(species_of or {})
        self.of_class = [of.get(c, c) for c in self.classes]
        self.columns = list(columns) if columns else list(dict.fromkeys(self.of_class))
        unknown = sorted(set(self.of_class) - set(self.columns))
        empty = [s for s in self.columns if s not in self.of_class]
        if unknown or empty:
            raise ConfigError(f"class -> species map: species {unknown} of the classes are not "
                              f"submission columns, columns {empty} have no class; rerun 01")
        self.members = [[k for k, s in enumerate(self.of_class) if s == col]
                        for col in self.columns]
        self.identity = self.of_class == self.columns
        self._of = dict(zip(self.classes, self.of_class))

    def species(self, name: str) -> str:
        """The species of a class name; a species name (or any other) is returned as it is."""
        return self._of.get(name, name)

    def to_species(self, values) -> np.ndarray:
        """(..., K) per class -> (..., S) per species: the max over each species' classes."""
        values = np.asarray(values)
        if self.identity:
            return values
        return np.stack([values[..., m].max(axis=-1) for m in self.members], axis=-1)

    def lwlrap(self, truth, scores) -> float:
        """LWLRAP per species of (N, K) per-class 0/1 truth and scores."""
        return metrics.lwlrap(self.to_species(truth), self.to_species(scores))

    def to_json(self) -> dict:
        """What classes.json records: the species (submission columns, in order) and the
        species of every class."""
        return {"species": self.columns, "species_of": dict(zip(self.classes, self.of_class))}


def from_meta(meta: dict) -> SpeciesMap:
    """The map classes.json records; runs made before it was written: the identity."""
    return SpeciesMap(meta["classes"], meta.get("species_of"), meta.get("species"))

