"""Change points in one benchmark's history: steps (a level that jumps and stays) and creeps (a steady drift).

A series is one value per run (a run's median over its invocations, or that divided by the
reference probe), oldest first.  Everything is computed on log values, so a change is relative:
a 5% step is the same size at 1 ms and at 100 ms.

Method: forward selection of piecewise terms, each admitted by a permutation test.
The model of the log values starts flat (one level).  Each round considers every candidate term

* a **step** at run j: the indicator ``1[i >= j]`` (with only steps this is binary segmentation
  with E-divisive means' statistic, as in MongoDB's signal processing and Apache Otava);
* a **creep** from run t: the hinge ``max(0, i - t + 1)``, flat before t, linear from t on (a
  slow creep of +2% a night has no single step worth the name, but one hinge fits it exactly);

and takes the one that removes the most residual sum of squares.  Its significance is the
permutation test of that maximum: the current model's residuals are shuffled (seeded, so the
answer is deterministic) and the best reduction over every candidate is recomputed for each
shuffle; p = (1 + shuffles at least as good) / (1 + shuffles).  Steps and creeps compete in the
same maximum, so a ramp is named a creep (a hinge fits it better than any step), a jump a step,
and the search over every position and both kinds is part of the null distribution: on pure
noise the first round passes with probability alpha, whatever the noise level.

Selection stops at the first term with p >= alpha.  A significant term smaller than
``min_change`` is kept in the model (so it cannot mask a later one) but not reported.  After
selection each term's position is refined within a few runs with the others fixed (greedy
selection can misplace the first of two nearby changes), and all terms are fitted jointly.

Adding column c to a design X reduces the residual sum of squares by (c' . r)^2 / |c'|^2, where c'
is c residualised on X (Frisch-Waugh), so every candidate under every shuffle is one matrix
product: a 60-run series costs milliseconds.

Per-run noise estimates (e.g. the spread of a run's invocations), when given, weight the fit
(weighted least squares, clipped to a factor of 2 around their median so that one run with
three lucky invocations cannot dominate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

DEFAULT_MIN_CHANGE = 0.02
DEFAULT_ALPHA = 0.01
DEFAULT_PERMUTATIONS = 999
MIN_STEP_RUNS = 3  # runs on each side of a step: fewer cannot tell a step from an outlier
MIN_CREEP_RUNS = 4  # runs on a creep: fewer are indistinguishable from a step
MIN_RUNS_BEFORE_CREEP = 3  # a creep needs a level to creep from
REFINE_RADIUS = 3


@dataclass(frozen=True)
class ChangePoint:
    """One change of a series.

    ``index`` is the position (in the series as given, NaNs included) of the first run after
    the change: the first run at the new level for a step, the first run that crept for a creep.
    ``before``/``after`` are fitted levels in the series' own unit: for a step just before and at
    ``index``; for a creep before it started and at its last run (``runs`` runs later).
    ``relative_change`` is after / before - 1; ``slope_per_run`` (creeps) the relative change per run.
    """

    kind: Literal["step", "creep"]
    index: int
    run_id: str | None
    before: float
    after: float
    relative_change: float
    p_value: float
    slope_per_run: float | None = None
    runs: int | None = None
    started_at: str | None = None

    def describe(self) -> str:
        """'step +10.2% at run X (2026-11-20), p=0.001' or 'creep +2.1%/run since run X (...)...'."""
        run = self.run_id if self.run_id is not None else f"#{self.index}"
        when = f" ({self.started_at[:10]})" if self.started_at else ""
        p = f"p={self.p_value:.2g}"
        if self.kind == "step":
            return f"step {self.relative_change:+.1%} at run {run}{when}, {p}"
        return (f"creep {self.slope_per_run:+.1%}/run since run {run}{when}: {self.relative_change:+.1%} over "
                f"{self.runs} runs, {p}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Term:
    kind: Literal["step", "creep"]
    at: int  # position in the compacted (finite-only) series
    p_value: float


def detect(values: Sequence[float], run_ids: Sequence[str] | None = None, noise: Sequence[float] | None = None,
           started_at: Sequence[str | None] | None = None, min_change: float = DEFAULT_MIN_CHANGE,
           alpha: float = DEFAULT_ALPHA, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
           max_changes: int = 8) -> list[ChangePoint]:
    """The change points of one series (positive values, oldest first), in order of position.

    NaN, infinite and non-positive values are skipped (a run that measured nothing); positions
    in the result still refer to the series as given.  ``noise`` is an optional per-run relative
    noise estimate (about the standard deviation of log value); missing entries take the median.
    """
    raw = np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)
    for name, other in (("run_ids", run_ids), ("noise", noise), ("started_at", started_at)):
        if other is not None and len(other) != raw.size:
            raise ValueError(f"{name} has {len(other)} entries for {raw.size} values")
    kept = np.flatnonzero(np.isfinite(raw) & (raw > 0))
    y = np.log(raw[kept])
    n = y.size
    if n < 2 * MIN_STEP_RUNS or float(np.ptp(y)) == 0.0:
        return []
    weights = _weights(noise, kept)
    mixed = _select(y, weights, ("step", "creep"), alpha, permutations, seed, max_changes)
    if not mixed:  # the global test: no term of either kind is significant
        return []
    # Greedy selection can take a staircase of steps for one long creep; steps alone may explain the
    # series better.  Of the two selections, keep the one with the better penalised fit (BIC).
    steps = _select(y, weights, ("step",), alpha, permutations, seed, max_changes)
    terms = steps if steps and _bic(y, weights, steps) <= _bic(y, weights, mixed) else mixed
    return _report(raw, kept, y, weights, terms, run_ids, started_at, min_change)


def _select(y: np.ndarray, weights: np.ndarray, kinds: tuple[str, ...], alpha: float, permutations: int,
            seed: int, max_changes: int) -> list[_Term]:
    """Forward selection of terms of these kinds while the next one is significant, then refined."""
    terms: list[_Term] = []
    rng = np.random.default_rng(seed)
    for _ in range(max_changes):
        found = _best_term(y, weights, terms, permutations, rng, kinds)
        if found is None or found.p_value >= alpha:
            break
        terms.append(found)
    return _refine(y, weights, terms) if terms else []


def _bic(y: np.ndarray, weights: np.ndarray, terms: Sequence[_Term]) -> float:
    """Bayesian information criterion of a model; each term costs two parameters (where, how much)."""
    n = y.size
    rss = max(_rss(y, weights, terms), 1e-300)
    return n * math.log(rss / n) + (1 + 2 * len(terms)) * math.log(n)


def _weights(noise: Sequence[float] | None, kept: np.ndarray) -> np.ndarray:
    """sqrt of the least-squares weights: 1 / noise, clipped to [1/2, 2] x their median."""
    if noise is None:
        return np.ones(kept.size)
    sd = np.asarray([math.nan if v is None else float(v) for v in noise], dtype=float)[kept]
    usable = np.isfinite(sd) & (sd > 0)
    if not usable.any():
        return np.ones(kept.size)
    typical = float(np.median(sd[usable]))
    sd = np.where(usable, np.clip(sd, typical / 2, typical * 2), typical)
    return typical / sd


def _column(kind: str, at: int, n: int) -> np.ndarray:
    index = np.arange(n, dtype=float)
    if kind == "step":
        return (index >= at).astype(float)
    return np.maximum(0.0, index - at + 1)


def _design(n: int, terms: Sequence[_Term]) -> np.ndarray:
    return np.column_stack([np.ones(n)] + [_column(t.kind, t.at, n) for t in terms])


def _allowed(kind: str, at: int, n: int, terms: Sequence[_Term]) -> bool:
    if kind == "step":
        if at < MIN_STEP_RUNS or n - at < MIN_STEP_RUNS:
            return False
        return all(abs(at - t.at) >= MIN_STEP_RUNS for t in terms if t.kind == "step")
    if at < MIN_RUNS_BEFORE_CREEP or n - at < MIN_CREEP_RUNS:
        return False
    return all(abs(at - t.at) >= MIN_CREEP_RUNS for t in terms if t.kind == "creep")


def _fit(y: np.ndarray, weights: np.ndarray, design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients, weighted residuals)."""
    weighted = design * weights[:, None]
    coef, *_ = np.linalg.lstsq(weighted, y * weights, rcond=None)
    return coef, y * weights - weighted @ coef


def _best_term(y: np.ndarray, weights: np.ndarray, terms: list[_Term], permutations: int,
               rng: np.random.Generator, kinds: tuple[str, ...]) -> _Term | None:
    n = y.size
    candidates = [(kind, at) for kind in kinds for at in range(1, n) if _allowed(kind, at, n, terms)]
    if not candidates:
        return None
    design = _design(n, terms) * weights[:, None]
    _, residual = _fit(y, weights, _design(n, terms))
    scale = float(np.abs(y * weights).max()) or 1.0
    if float(residual @ residual) <= (1e-12 * scale) ** 2 * n:
        return None  # the model already fits exactly: nothing left to explain
    columns = np.column_stack([_column(kind, at, n) for kind, at in candidates]) * weights[:, None]
    projection, *_ = np.linalg.lstsq(design, columns, rcond=None)
    orthogonal = columns - design @ projection
    norms = (orthogonal ** 2).sum(axis=0)
    usable = norms > 1e-9 * n
    if not usable.any():
        return None
    orthogonal, norms = orthogonal[:, usable], norms[usable]
    candidates = [c for c, keep in zip(candidates, usable, strict=True) if keep]
    reduction = (residual @ orthogonal) ** 2 / norms
    best = int(np.argmax(reduction))
    shuffled = rng.permuted(np.tile(residual, (permutations, 1)), axis=1)
    null = ((shuffled @ orthogonal) ** 2 / norms).max(axis=1)
    # A relative tolerance: a shuffle that reproduces the observed split must count as "at least as good".
    at_least = int((null >= reduction[best] * (1 - 1e-9)).sum())
    kind, at = candidates[best]
    return _Term(kind, at, (1 + at_least) / (1 + permutations))


def _rss(y: np.ndarray, weights: np.ndarray, terms: Sequence[_Term]) -> float:
    _, residual = _fit(y, weights, _design(y.size, terms))
    return float(residual @ residual)


def _refine(y: np.ndarray, weights: np.ndarray, terms: list[_Term]) -> list[_Term]:
    """Move each term within REFINE_RADIUS runs, the others fixed, while that lowers the residual."""
    n = y.size
    terms = list(terms)
    for _ in range(2):
        moved = False
        for position, term in enumerate(terms):
            others = terms[:position] + terms[position + 1:]
            best, best_rss = term, _rss(y, weights, terms)
            for at in range(term.at - REFINE_RADIUS, term.at + REFINE_RADIUS + 1):
                if at == term.at or not _allowed(term.kind, at, n, others):
                    continue
                candidate = _Term(term.kind, at, term.p_value)
                rss = _rss(y, weights, [*others, candidate])
                if rss < best_rss * (1 - 1e-12):
                    best, best_rss = candidate, rss
            if best is not term:
                terms[position], moved = best, True
        if not moved:
            break
    return sorted(terms, key=lambda t: (t.at, t.kind))


def _report(raw: np.ndarray, kept: np.ndarray, y: np.ndarray, weights: np.ndarray, terms: list[_Term],
            run_ids: Sequence[str] | None, started_at: Sequence[str | None] | None,
            min_change: float) -> list[ChangePoint]:
    n = y.size
    design = _design(n, terms)
    coef, _ = _fit(y, weights, design)
    fitted = design @ coef
    positions = sorted({t.at for t in terms})
    out = []
    for term, effect in zip(terms, coef[1:], strict=True):
        original = int(kept[term.at])
        label = str(run_ids[original]) if run_ids is not None else None
        when = started_at[original] if started_at is not None else None
        effect = float(effect)
        if term.kind == "step":
            after = float(fitted[term.at])
            before = after - effect
            change = math.expm1(effect)
            slope, runs = None, None
        else:
            # The creep lasts until the next change point (or the newest run).
            end = next((p for p in positions if p > term.at), n) - 1
            runs = end - term.at + 1
            before = float(fitted[term.at - 1])
            after = before + effect * runs
            change, slope = math.expm1(effect * runs), math.expm1(effect)
        if abs(change) < min_change:
            continue
        out.append(ChangePoint(term.kind, original, label, math.exp(before), math.exp(after), change,
                               term.p_value, slope, runs, when))
    return out


def robust_noise(values: Sequence[float]) -> float:
    """The series' own run-to-run noise: MAD of successive log differences, as a standard deviation.

    Successive differences cancel level changes (a step moves one difference only), so this is
    the noise even of a series that changed.  NaN below three usable values.
    """
    array = np.asarray([v for v in values if v is not None and np.isfinite(v) and v > 0], dtype=float)
    if array.size < 3:
        return math.nan
    diffs = np.diff(np.log(array))
    # 1.4826 turns a MAD into a normal SD; the differences of iid noise have sqrt(2) x its SD.
    return float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2))
