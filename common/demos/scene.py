"""Mixing one demo recording: calls, look-alikes, FP boxes and background on one canvas
(the Scene used by common.demos.rfcx; the sound synthesis is in common.demos.calls and
common.demos.noise)."""
from __future__ import annotations

import numpy as np

from common.demos.calls import SPECIES, decoy, extent, fit_pitch, noise_burst, songtype4, synth_call
from common.demos.noise import band_power, colored_noise, drone, rain


# ----------------------------------------------------------------------------- mixing
GAP_S = 0.1  # s kept free between calls of a species and FP boxes of that species


def _lookalikes(s: int) -> list[int]:
    """Species whose calls fall at least 30 % into s's band; same call shape counted twice."""
    sp, out = SPECIES[s], []
    for c, other in enumerate(SPECIES):
        lo, hi = extent(other)
        if c != s and min(hi, sp["f_hi"]) - max(lo, sp["f_lo"]) >= 0.3 * (hi - lo):
            out += [c, c] if other["shape"] == sp["shape"] else [c]
    return out


LOOKALIKES = [_lookalikes(s) for s in range(len(SPECIES))]


class Scene:
    """One recording being mixed: noise floor, placed events, per-species busy intervals."""

    def __init__(self, spec, rng):
        self.spec, self.rng, self.sr = spec, rng, spec.sample_rate
        self.n = int(round(spec.duration * self.sr))
        self.audio, self.cum = colored_noise(self.n, self.sr, rng, seed=spec.seed)
        self.busy: dict[int, list] = {s: [] for s in range(len(SPECIES))}
        self.events: list[dict] = []

    def duration(self, median: float) -> float:
        """Lognormal (+-30 %) around the median, clipped to 0.25..8 s and into the recording."""
        return float(np.clip(median * self.rng.lognormal(0, 0.3), 0.25, min(8.0, 0.9 * self.spec.duration)))

    def free_time(self, dur: float, avoid) -> float | None:
        """A start time whose span keeps clear of the busy intervals of species in `avoid`."""
        for _ in range(40):
            t0 = self.rng.uniform(0, self.spec.duration - dur)
            if all(b + GAP_S <= t0 or t0 + dur + GAP_S <= a for s in avoid for a, b in self.busy[s]):
                return t0
        return None

    def mix(self, sig, t0: float, f_lo: float, f_hi: float, snr_db: float) -> None:
        """Add `sig` at t0 s, scaled to snr_db over the noise power within f_lo..f_hi."""
        start = int(round(t0 * self.sr))
        sig = sig[: self.n - start]
        power = band_power(self.cum, f_lo, f_hi)
        gain = float(np.sqrt(10 ** (snr_db / 10) * power / np.mean(sig ** 2)))
        self.audio[start:start + len(sig)] += sig * gain

    def add(self, kind, species, songtype, tpl, band, dur, t0, snr_db, note="") -> dict:
        """Synthesise a template call at t0 and record it with its box (extent, padded, in band)."""
        lo, hi = extent(tpl)
        pad = max(50.0, 0.03 * (hi - lo))
        f_lo, f_hi = max(band[0], lo - pad), min(band[1], hi + pad)
        sig = noise_burst(lo, hi, dur, self.sr, self.rng) if kind == "noise" else \
            synth_call(tpl, dur, self.sr, self.rng)
        self.mix(sig, t0, f_lo, f_hi, snr_db)
        ev = dict(kind=kind, species_id=species, songtype_id=songtype, t_min=t0, f_min=f_lo,
                  t_max=t0 + dur, f_max=f_hi, snr_db=snr_db, annotation=note)
        self.events.append(ev)
        return ev

    def call(self, s: int, snr_db: float, avoid=(), note="") -> dict | None:
        """A real call of species s (songtype 4 for 30 % of calls of s16, s17, s23)."""
        sp = SPECIES[s]
        songtype = 4 if sp["st4"] and self.rng.random() < 0.3 else 1
        dur = self.duration(sp["median_s"] * (0.6 if songtype == 4 else 1.0))
        t0 = self.free_time(dur, (s, *avoid))
        if t0 is None:
            return None
        tpl = fit_pitch(songtype4(sp) if songtype == 4 else sp, sp["f_lo"], sp["f_hi"], self.rng, 0.07)
        ev = self.add("call", s, songtype, tpl, (sp["f_lo"], sp["f_hi"]), dur, t0, snr_db, note)
        self.busy[s].append((ev["t_min"], ev["t_max"]))
        return ev

    def lookalike(self, s: int, avoid=(), snr_db=None, note="") -> dict | None:
        """Something in s's band that is not s: an unlisted decoy of its family or a noise burst."""
        sp, rng = SPECIES[s], self.rng
        band = (sp["f_lo"], sp["f_hi"])
        snr_db = rng.uniform(self.spec.snr_min_db, self.spec.snr_max_db) if snr_db is None else snr_db
        if rng.random() < 0.6:
            dur = self.duration(sp["median_s"] * rng.uniform(0.6, 1.5))
            tpl, kind = fit_pitch(decoy(sp), *band, rng, 0.15), "decoy"
        else:  # band noise over 30-100 % of the band, e.g. an insect buzz
            width = (band[1] - band[0]) * rng.uniform(0.3, 1.0)
            lo = rng.uniform(band[0], band[1] - width)
            dur = float(np.clip(sp["median_s"] * rng.uniform(0.5, 1.5), 0.25, 0.9 * self.spec.duration))
            tpl, kind = dict(sp, shape="clicks", a=lo, b=lo + width), "noise"
        t0 = self.free_time(dur, avoid)
        return None if t0 is None else self.add(kind, s, 1, tpl, band, dur, t0, snr_db, note)

    def fp_row(self, s: int) -> dict | None:
        """Place what a detector mistook for s: a look-alike species' call (35 %) or a decoy."""
        sp, rng = SPECIES[s], self.rng
        snr = rng.uniform(self.spec.tp_snr_min_db, self.spec.snr_max_db)
        ev = None
        if LOOKALIKES[s] and rng.random() < 0.35:
            ev = self.call(int(rng.choice(LOOKALIKES[s])), snr, avoid=(s,), note=f"fp:s{s}")
        ev = ev or self.lookalike(s, avoid=(s,), snr_db=snr, note=f"fp:s{s}")
        if ev is None:
            return None
        box = dict(ev, f_min=max(ev["f_min"], sp["f_lo"]), f_max=min(ev["f_max"], sp["f_hi"]))
        self.busy[s].append((box["t_min"], box["t_max"]))  # no later call of s may fall inside
        return dict(box, species_id=s, songtype_id=4 if sp["st4"] and rng.random() < 0.3 else 1)

    def background(self) -> None:
        """Rain bursts (broadband) and insect drones (steady AM tones, 2-9 kHz)."""
        rng, d = self.rng, self.spec.duration
        if rng.random() < self.spec.rain_prob:
            for _ in range(rng.integers(1, 3)):
                dur = min(rng.uniform(1.5, 6.0), d)
                t0 = rng.uniform(0, d - dur)
                start = int(round(t0 * self.sr))
                sig = rain(dur, self.sr, rng)[: self.n - start]
                snr = rng.uniform(0, 12)  # dB over the whole noise floor
                gain = float(np.sqrt(10 ** (snr / 10) / np.mean(sig ** 2)))
                self.audio[start:start + len(sig)] += sig * gain
                self.events.append(dict(kind="rain", species_id=-1, songtype_id=0, t_min=t0, f_min=400.0,
                                        t_max=t0 + dur, f_max=self.sr / 2, snr_db=0.0, annotation=""))
        if rng.random() < self.spec.drone_prob:
            for _ in range(1 + int(rng.random() < 0.3)):
                dur, fc = d * rng.uniform(0.3, 1.0), rng.uniform(2000, 9000)
                t0, lo, hi = rng.uniform(0, d - dur), fc * 0.995 - 60, fc * 1.005 + 60
                snr = rng.uniform(5, 20)
                self.mix(drone(dur, self.sr, fc, rng), t0, lo, hi, snr)
                self.events.append(dict(kind="drone", species_id=-1, songtype_id=0, t_min=t0, f_min=lo,
                                        t_max=t0 + dur, f_max=hi, snr_db=snr, annotation=""))

    def background_fp_rows(self, prob: float) -> list[dict]:
        """FP rows where a template detector fires on background: a 1-3 s stretch of an insect
        drone, for a species whose band holds the drone's pitch, or of a rain burst, for any
        species (RFCx's FP rows are full of such noise). Never over a call of that species."""
        rows, rng = [], self.rng
        for ev in [e for e in self.events if e["kind"] in ("drone", "rain")]:
            if rng.random() >= prob:
                continue
            centre = 0.5 * (ev["f_min"] + ev["f_max"])
            fits = [s for s, sp in enumerate(SPECIES) if ev["kind"] == "rain"
                    or sp["f_lo"] <= centre <= sp["f_hi"]]
            if not fits:
                continue
            s = int(rng.choice(fits))
            sp, span = SPECIES[s], ev["t_max"] - ev["t_min"]
            dur = min(rng.uniform(1.0, 3.0), span)
            t0 = ev["t_min"] + rng.uniform(0, span - dur)
            if any(a - GAP_S < t0 + dur and t0 < b + GAP_S for a, b in self.busy[s]):
                continue
            self.busy[s].append((t0, t0 + dur))
            f_lo, f_hi = (sp["f_lo"], sp["f_hi"]) if ev["kind"] == "rain" else \
                (max(ev["f_min"], sp["f_lo"]), min(ev["f_max"], sp["f_hi"]))
            rows.append(dict(ev, species_id=s, songtype_id=1, t_min=t0, t_max=t0 + dur,
                             f_min=f_lo, f_max=f_hi, annotation=f"fp:s{s}"))
        return rows
