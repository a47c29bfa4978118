"""The adaptive mixture (`mixture.adaptive`): each stage samples its strata with weights that follow the
student's held-out gap, so the prompts it still gets most wrong come up more often (DoReMi-style online
reweighting, steered by the conditioning gap instead of a reference model's loss).

A stratum is a category of the held-out gap (color, spatial, ..., text_rendering, general; in a curated set
the category also fixes the criterion: general is quality, text_rendering is text, the others semantic).
Every validation updates a running excess gap per stratum, e_s <- (1 - rate) e_s + rate * gap_s / gap (its
gap relative to the overall one, so the running value does not carry the early, far larger gaps; a stratum
without held-out prompts counts as 1), and a stage whose strata have natural shares p_s (their share of its
prompts) samples stratum s with

    w_s = (1 - floor) * normalise(p_s * e_s^power) + floor * p_s

so a stratum with twice the mean gap is drawn about 2^power times as often (before the floor), and none
falls below floor x its natural share. The running excesses are the whole state: they are saved in every
checkpoint, the weights follow from them, and the draws come from the step's own generator, so a resumed
run samples what an uninterrupted one does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch

from train.data import Prompt, PromptStream


def update_excess(excess: dict[str, float], report: dict[str, Any], rate: float) -> dict[str, float]:
    """The running per-stratum excess gaps after one validation report (train.evaluate.gap_report's)."""
    out, overall = dict(excess), report["gap"]
    if not (math.isfinite(overall) and overall > 0):
        return out
    for stratum, gap in report["per_category"].items():
        if math.isfinite(gap):
            ratio = gap / overall
            out[stratum] = ratio if stratum not in excess else (1 - rate) * excess[stratum] + rate * ratio
    return out


def mixture_weights(shares: dict[str, float], excess: dict[str, float], floor: float, power: float) -> dict[str, float]:
    """Sampling weights of a stage's strata (their natural `shares`) from the running `excess` (module docstring)."""
    raw = {s: shares[s] * max(excess.get(s, 1.0), 0.0) ** power for s in shares}
    total = sum(raw.values())
    if not total > 0:
        return {s: shares[s] for s in sorted(shares)}
    return {s: (1 - floor) * raw[s] / total + floor * shares[s] for s in sorted(shares)}


class StratifiedStream:
    """One stage's prompts by stratum, each an endless reshuffled PromptStream. `take` draws each prompt's
    stratum from the weights with the step's generator and reads that stratum's stream at its position
    (positions: the caller's state, advanced in place)."""

    def __init__(self, prompts: list[Prompt], seed: int):
        groups: dict[str, list[Prompt]] = defaultdict(list)
        for p in prompts:
            groups[p["category"]].append(p)
        self.strata = sorted(groups)
        self.shares = {s: len(groups[s]) / len(prompts) for s in self.strata}
        self.streams = {s: PromptStream(groups[s], seed * 1_009 + i) for i, s in enumerate(self.strata)}

    def take(self, positions: dict[str, int], count: int, weights: dict[str, float],
             generator: torch.Generator) -> list[Prompt]:
        probs = torch.tensor([weights[s] for s in self.strata], dtype=torch.float64)
        picks = torch.multinomial(probs, count, replacement=True, generator=generator).tolist()
        out = []
        for i in picks:
            stratum = self.strata[i]
            out += self.streams[stratum].take(positions.get(stratum, 0), 1)
            positions[stratum] = positions.get(stratum, 0) + 1
        return out
