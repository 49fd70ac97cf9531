"""What each demo recording holds, decided before any sound is made (common.demos.rfcx renders it):
which species call, which are annotated as TP, how many FP rows and for which species, and
the test clips' species drawn with RFCx-like skew. One RNG for the whole plan, so the plan
(and the byte-identical dataset) does not depend on the number of rendering processes."""
from __future__ import annotations

import numpy as np

from common.demos.calls import SPECIES

N_SPECIES = len(SPECIES)
# Share of test clips in which each species calls (RFCx-like skew, ~3 species per clip);
# train recordings draw their unannotated background species from the same table.
PREVALENCE = [0.02, 0.07, 0.06, 0.90, 0.07, 0.02, 0.08, 0.20, 0.06, 0.02, 0.15, 0.07,
              0.18, 0.02, 0.07, 0.02, 0.06, 0.08, 0.45, 0.02, 0.06, 0.02, 0.02, 0.22]
MAX_SPECIES = 8    # species calling in one recording at most (RFCx test: 1 to 8)


def _recording_ids(rng, count: int) -> list[str]:
    """Unique 9-hex-digit ids that no CSV reader takes for a number (e.g. '00ad36516')."""
    ids: list[str] = []
    while len(ids) < count:
        rid = f"{int(rng.integers(0, 16 ** 9)):09x}"
        try:
            float(rid)  # all digits or '123e45678' would be read back as a number
        except ValueError:
            if rid not in ids:
                ids.append(rid)
    return ids


class _Deck:
    """Shuffled rounds of all species dealt in order, so each comes up equally often."""

    def __init__(self, rng):
        self.rng, self.cards = rng, []

    def deal(self, k: int) -> list[int]:
        hand: list[int] = []
        while len(hand) < k:
            if all(c in hand for c in self.cards):  # only duplicates left: shuffle a new round under them
                self.cards = self.rng.permutation(N_SPECIES).tolist() + self.cards
            top = max(i for i, c in enumerate(self.cards) if c not in hand)
            hand.append(int(self.cards.pop(top)))
        return hand


def plan_recordings(spec) -> list[dict]:
    """Per recording: species calling, annotated species, FP rows (one RNG: flat decks)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0]))
    ids = _recording_ids(rng, spec.n_train + spec.n_test)
    prev = np.asarray(PREVALENCE)
    n_fp_only = int(round(spec.fp_only_frac * spec.n_train))
    fp_only = set(rng.choice(spec.n_train, n_fp_only, replace=False).tolist())
    tp_deck, fp_deck, plan = _Deck(rng), _Deck(rng), []
    for i in range(spec.n_train):
        annotated = [] if i in fp_only else tp_deck.deal(1 + int(rng.random() < spec.two_species_frac))
        scale = spec.train_background if annotated else 1.0
        others = [int(s) for s in np.flatnonzero(rng.random(N_SPECIES) < prev * scale)
                  if s not in annotated]
        rng.shuffle(others)
        species = sorted(annotated + others[:MAX_SPECIES - len(annotated)])
        # FP-only recordings have >= 1 FP row; the rows cluster on 1-3 species, as a detector's do
        n_fp = 1 + rng.poisson(max(spec.fp_rows - 1, 0)) if i in fp_only else rng.poisson(spec.fp_rows / 2)
        plan.append(dict(split="train", index=i, rid=ids[i], species=species, annotated=annotated,
                         n_fp=int(n_fp), fp_species=fp_deck.deal(min(3, (n_fp + 1) // 2))))
    sets = []
    for _ in range(spec.n_test):
        chosen = [int(s) for s in np.flatnonzero(rng.random(N_SPECIES) < prev)]
        if not chosen:
            chosen = [int(rng.choice(N_SPECIES, p=prev / prev.sum()))]
        sets.append(sorted(rng.permutation(chosen)[:MAX_SPECIES].tolist()))
    for s in range(N_SPECIES):  # every species in test at least once: per-species metrics exist
        if not any(s in x for x in sets):
            room = [j for j, x in enumerate(sets) if len(x) < MAX_SPECIES]
            if room:
                j = min(room, key=lambda k: (len(sets[k]), rng.random()))
                sets[j] = sorted(sets[j] + [s])
    plan += [dict(split="test", index=j, rid=ids[spec.n_train + j], species=x, annotated=[], n_fp=0,
                  fp_species=[]) for j, x in enumerate(sets)]
    return plan
