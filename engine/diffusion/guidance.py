"""Guidance strategies: at which model evaluations classifier-free guidance runs.

A strategy is a string, recorded as such in a run's configuration:

    full              CFG at every evaluation (the release)
    none              conditional prediction only, everywhere (half the denoiser rows)
    first:K           CFG for the first K solver steps, conditional-only after
    interval:LO:HI    CFG only while LO < sigma <= HI (Kynkaenniemi et al. 2024, "Applying guidance
                      in a limited interval improves sample and distribution quality")

Every strategy reduces to a sigma interval (``first:K`` to sigma >= the K-th step's sigma), so a
decision depends only on the noise level of the evaluation: Heun's corrector evaluations follow the
same rule as the steps around them, and the runtime and the cost model decide identically.

A conditional-only evaluation returns the conditional prediction, i.e. CFG with scale 1. How it is
computed depends on the time-context layout (see docs/modes.md, "conditional-only steps"):
``fixed`` runs the conditional rows alone; ``release`` runs them alone in the ``release_cond``
layout, which reproduces what the conditional row of a release CFG pair reads from its
unconditional partner (zeros), so it equals that row's prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

STRATEGIES = ("full", "none", "first", "interval")


@dataclass(frozen=True)
class Guidance:
    kind: str = "full"
    steps: int = 0  # first:K
    lo: float = 0.0  # interval:LO:HI
    hi: float = math.inf

    @classmethod
    def parse(cls, text: str) -> Guidance:
        """``full`` | ``none`` | ``first:K`` | ``interval:LO:HI`` -> a Guidance (ValueError if malformed)."""
        kind, *args = text.strip().split(":")
        try:
            if kind in ("full", "none") and not args:
                return cls(kind)
            if kind == "first" and len(args) == 1 and int(args[0]) >= 0:
                return cls(kind, steps=int(args[0]))
            if kind == "interval" and len(args) == 2:
                lo, hi = float(args[0]), float(args[1])
                if 0 <= lo < hi:
                    return cls(kind, lo=lo, hi=hi)
        except ValueError:
            pass
        raise ValueError(f"guidance strategy {text!r}: use full, none, first:K (K >= 0) or interval:LO:HI "
                         "(0 <= LO < HI, sigmas)")

    def __str__(self) -> str:
        if self.kind == "first":
            return f"first:{self.steps}"
        if self.kind == "interval":
            return f"interval:{self.lo:g}:{self.hi:g}"
        return self.kind

    def bounds(self, sigmas: torch.Tensor) -> tuple[float, float]:
        """(lo, hi]: the sigma interval in which CFG runs, for this schedule."""
        if self.kind == "full":
            return -math.inf, math.inf
        if self.kind == "none" or (self.kind == "first" and self.steps == 0):
            return math.inf, math.inf
        if self.kind == "first":
            k = min(self.steps, len(sigmas) - 1)
            return float(sigmas[k - 1]) * (1 - 1e-6), math.inf  # >= the K-th step's sigma
        return self.lo, self.hi

    def plan(self, levels: list[float], sigmas: torch.Tensor) -> list[bool]:
        """For each model evaluation (its sigma, in order): does it run CFG?"""
        lo, hi = self.bounds(sigmas)
        return [lo < s <= hi for s in levels]
