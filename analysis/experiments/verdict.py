"""The verdict protocol: how every trained experiment decides whether it supports a paper's claim.

One claim compares a *treatment* arm with a *control* arm on one measure, over paired seeds: seed ``s`` trains
both arms on the same data order from the same initial weights for what they share, so the per-seed difference
cancels what the seed alone decides. The protocol, in the order it is applied:

1. **Learnability gate.** Every run of both arms must reach the stated validation accuracy
   (:func:`learnability_gate`: three times chance unless an experiment states otherwise) before a comparison of
   speed or accuracy counts. A comparison whose arm failed the gate in any seed is ``not tested``, whatever the
   numbers say, and the verdict names the arm and the seeds.
2. **Effect.** The mean of the paired differences ``treatment - control``, signed so that a positive effect
   is the paper's direction (``higher_is_better=False`` flips it), with the median beside it.
3. **Interval.** A two-sided 95% confidence interval from Student's t on the paired differences
   (``scipy.stats.ttest_rel``; the differences of a handful of seeds are close enough to normal for the t
   interval, and it is exact when they are normal).
4. **Minimum detectable effect.** The smallest true effect the paired t-test at this ``n`` and this seed
   standard deviation detects with 80% power at the 5% level (:func:`minimum_detectable_effect`, solved
   exactly on the noncentral t distribution). A "no effect detected" is only as strong as its MDE.
5. **Verdict**, exactly one of: ``supports`` (the interval excludes 0 on the paper's side), ``contradicts``
   (it excludes 0 on the other side), ``no effect detected`` (it contains 0), ``not tested`` (the gate).

Times to a target (:func:`steps_to_target`) are censored when a run does not get there within its budget:
:func:`reached` says "reached in k/n seeds", :func:`km_median` gives the Kaplan-Meier median
(``scipy.stats.ecdf`` on right-censored data), and the paired comparison uses a censoring-free measure instead,
the area under the validation-accuracy curve (:func:`curve_area`), never the budget substituted for a missing
time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = [
    "SUPPORTS",
    "CONTRADICTS",
    "NO_EFFECT",
    "NOT_TESTED",
    "VERDICTS",
    "CONFIDENCE",
    "POWER",
    "INTERVAL_METHOD",
    "learnability_gate",
    "minimum_detectable_effect",
    "PairedEffect",
    "paired_effect",
    "Verdict",
    "judge",
    "compare_arms",
    "curve_area",
    "km_median",
    "reached",
    "steps_to_target",
    "CLAIM_COLUMNS",
    "Claim",
]

SUPPORTS = "supports"
CONTRADICTS = "contradicts"
NO_EFFECT = "no effect detected"
NOT_TESTED = "not tested"
VERDICTS = (SUPPORTS, CONTRADICTS, NO_EFFECT, NOT_TESTED)

CONFIDENCE = 0.95
POWER = 0.80
INTERVAL_METHOD = "paired t, 95%"
GATE_FACTOR = 3.0


def learnability_gate(chance: float, factor: float = GATE_FACTOR) -> float:
    """The validation accuracy every run must reach before its comparison counts: ``factor`` x chance (0.30 for
    ten classes), but never above halfway from chance to 1 (so two classes ask for 0.75, not 1.5)."""
    if not 0.0 < chance < 1.0:
        raise ValueError(f"chance must be in (0, 1), got {chance}")
    if factor <= 1.0:
        raise ValueError(f"the gate's factor must be > 1 (above chance), got {factor}")
    return min(factor * chance, (1.0 + chance) / 2.0)


def minimum_detectable_effect(sd: float, n: int, *, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """The smallest true mean difference that a two-sided paired t-test on ``n`` seeds with standard deviation
    ``sd`` of the differences detects with probability ``power`` at level ``1 - confidence``.

    Solved on the noncentral t distribution (noncentrality ``delta * sqrt(n) / sd``), not the normal
    approximation, which understates the MDE badly at five seeds. NaN for fewer than two seeds; 0 when ``sd``
    is 0 (every seed gave the same difference)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0.0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, df)

    def shortfall(noncentrality: float) -> float:
        # The wrong-side tail is negligible where scipy's nct returns NaN for it (far from the centre).
        wrong_side = float(np.nan_to_num(stats.nct.cdf(-crit, df, noncentrality)))
        return float(stats.nct.sf(crit, df, noncentrality)) + wrong_side - power

    # Power rises monotonically with the noncentrality and exceeds any power below 1 by crit + 10.
    noncentrality = optimize.brentq(shortfall, 0.0, crit + 10.0)
    return float(noncentrality * sd / math.sqrt(n))


@dataclass(frozen=True)
class PairedEffect:
    """The paired comparison of two arms over ``n`` seeds, signed so that positive is the paper's direction."""

    n: int
    treatment_mean: float
    control_mean: float
    effect: float
    median: float
    sd: float
    ci_low: float
    ci_high: float
    mde: float
    p_value: float

    @property
    def word(self) -> str:
        """The verdict the interval alone gives (the gate is applied by :func:`judge`)."""
        if self.n < 2 or math.isnan(self.ci_low):
            return NO_EFFECT
        if self.ci_low > 0.0:
            return SUPPORTS
        if self.ci_high < 0.0:
            return CONTRADICTS
        return NO_EFFECT


def paired_effect(treatment: Sequence[float], control: Sequence[float], *, higher_is_better: bool = True,
                  confidence: float = CONFIDENCE, power: float = POWER) -> PairedEffect:
    """Paired comparison of ``treatment`` and ``control``, one value per seed in the same seed order.

    The effect is the mean of ``treatment - control`` (``control - treatment`` with ``higher_is_better=False``),
    its interval Student's t on those differences at ``confidence``, its MDE at ``power``. A pair with a NaN on
    either side is dropped (a run that logged no value); fewer than two pairs give a NaN interval."""
    t = np.asarray(treatment, dtype=float)
    c = np.asarray(control, dtype=float)
    if t.shape != c.shape or t.ndim != 1:
        raise ValueError(f"treatment and control need one value per seed each, got shapes {t.shape} and {c.shape}")
    keep = ~(np.isnan(t) | np.isnan(c))
    t, c = t[keep], c[keep]
    if not len(t):
        raise ValueError("no seed has a value in both arms: nothing to compare")
    sign = 1.0 if higher_is_better else -1.0
    diff = sign * (t - c)
    n = len(diff)
    effect = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        low = high = p_value = math.nan
    elif sd == 0.0:  # every seed gave the same difference: the interval is that point
        low = high = effect
        p_value = 0.0 if effect != 0.0 else 1.0
    else:
        test = stats.ttest_1samp(diff, 0.0)
        interval = test.confidence_interval(confidence)
        low, high, p_value = float(interval.low), float(interval.high), float(test.pvalue)
    return PairedEffect(n=n, treatment_mean=float(t.mean()), control_mean=float(c.mean()), effect=effect,
                        median=float(np.median(diff)), sd=sd, ci_low=low, ci_high=high,
                        mde=minimum_detectable_effect(sd, n, confidence=confidence, power=power), p_value=p_value)


@dataclass(frozen=True)
class Verdict:
    """One decided comparison: the words, the paired effect (None when no seed pairs), and why."""

    word: str
    effect: PairedEffect | None
    arms_learned: str  # "k/n": runs of both arms that passed the gate, of all runs compared
    reason: str

    def row(self) -> dict[str, Any]:
        """The figures of a ``claims.csv`` row: effect, ci_low, ci_high, seeds, arms_learned, mde, verdict."""
        e = self.effect
        return {"effect": e.effect if e else math.nan, "ci_low": e.ci_low if e else math.nan,
                "ci_high": e.ci_high if e else math.nan, "seeds": e.n if e else 0,
                "arms_learned": self.arms_learned, "mde": e.mde if e else math.nan, "verdict": self.word}

    def describe(self, measure: str, fmt: str = ".3f", unit: str = "") -> str:
        """``verdict: measure effect +x [lo, hi] (n seeds, MDE m)``, the line a section prints."""
        e = self.effect
        if e is None:
            return f"{self.word}: {self.reason}"
        figures = (f"{measure} {e.treatment_mean:{fmt}}{unit} vs {e.control_mean:{fmt}}{unit}, effect "
                   f"{e.effect:+{fmt}}{unit} [{e.ci_low:+{fmt}}, {e.ci_high:+{fmt}}] ({INTERVAL_METHOD} over {e.n} "
                   f"paired seeds; median {e.median:+{fmt}}; MDE {e.mde:{fmt}}{unit})")
        return f"{self.word}: {figures}" + (f"; {self.reason}" if self.reason else "")


def judge(effect: PairedEffect | None, *, failed: Mapping[str, Sequence[int]] | None = None,
          runs: int | None = None) -> Verdict:
    """The verdict for ``effect`` after the learnability gate: ``failed`` maps an arm to the seeds whose run did
    not pass the gate (any entry makes the comparison ``not tested``); ``runs`` is the number of runs compared
    (default ``2 * effect.n``)."""
    failed = {arm: sorted(seeds) for arm, seeds in (failed or {}).items() if len(seeds)}
    total = runs if runs is not None else (2 * effect.n if effect is not None else 0)
    bad = sum(len(s) for s in failed.values())
    learned = f"{total - bad}/{total}"
    if failed:
        names = "; ".join(f"{arm} in seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}"
                          for arm, s in failed.items())
        return Verdict(NOT_TESTED, effect, learned, f"did not pass the learnability gate: {names}")
    if effect is None:
        return Verdict(NOT_TESTED, None, learned, "no seed ran both arms")
    if effect.n < 2:
        return Verdict(NO_EFFECT, effect, learned, "one paired seed: no interval")
    return Verdict(effect.word, effect, learned, "")


def compare_arms(frame: pd.DataFrame, *, arm: str, treatment: Any, control: Any, value: str, seed: str = "seed",
                 learned: str | None = "learned", higher_is_better: bool = True) -> Verdict:
    """Decide ``treatment`` vs ``control`` from a tidy ``frame`` with one row per run: the arm in column ``arm``,
    the seed in ``seed``, the measure in ``value`` and, in ``learned``, whether the run passed the gate (None:
    no gate, for measures such as parameter counts). Seeds are paired on ``seed``; a seed that ran only one arm
    is dropped from the effect and named in the reason."""
    missing = [c for c in (arm, seed, value, *([learned] if learned else [])) if c not in frame]
    if missing:
        raise KeyError(f"compare_arms needs columns {missing}; the frame has {list(frame.columns)}")
    rows = {key: frame[frame[arm] == key].drop_duplicates(seed, keep="last").set_index(seed)
            for key in (treatment, control)}
    for key, part in rows.items():
        if part.empty:
            raise ValueError(f"arm {key!r} has no runs in column {arm!r} (arms: {sorted(frame[arm].unique())})")
    seeds = sorted(set(rows[treatment].index) & set(rows[control].index))
    unpaired = sorted(set(rows[treatment].index) ^ set(rows[control].index))
    failed: dict[str, list[int]] = {}
    if learned:
        for key, part in rows.items():
            bad = part.loc[seeds][~part.loc[seeds, learned].astype(bool)].index
            if len(bad):
                failed[str(key)] = [int(s) for s in bad]
    effect = None
    if seeds:
        effect = paired_effect(pd.to_numeric(rows[treatment].loc[seeds, value]).to_numpy(float),
                               pd.to_numeric(rows[control].loc[seeds, value]).to_numpy(float),
                               higher_is_better=higher_is_better)
    verdict = judge(effect, failed=failed, runs=2 * len(seeds))
    if unpaired:
        note = f"seed(s) {', '.join(map(str, unpaired))} ran one arm only and are left out"
        verdict = Verdict(verdict.word, verdict.effect, verdict.arms_learned,
                          f"{verdict.reason}; {note}" if verdict.reason else note)
    return verdict


# ================================================================================================ censoring
def curve_area(curve: pd.DataFrame, budget: float, *, step: str = "step", value: str = "accuracy",
               start: float = 0.0, start_value: float | None = None) -> float:
    """The mean of ``value`` over steps ``[start, budget]``: the trapezoid area under the curve divided by the
    span. It is defined for every run, finished or not, so it compares training speed without censoring: a
    run that reaches a level earlier, or a higher one, has a larger area. ``start_value`` is the value at
    ``start`` when the curve has no row there (chance accuracy, say); otherwise the first row is held back to
    ``start``. The last row is held to ``budget``; NaN values (a diverged run's) count as ``start_value`` or 0."""
    if budget <= start:
        raise ValueError(f"budget ({budget}) must be after start ({start})")
    ordered = curve[[step, value]].apply(pd.to_numeric, errors="coerce").dropna(subset=[step])
    ordered = ordered[(ordered[step] >= start) & (ordered[step] <= budget)].sort_values(step)
    floor = 0.0 if start_value is None else float(start_value)
    xs = ordered[step].to_numpy(float)
    ys = np.nan_to_num(ordered[value].to_numpy(float), nan=floor)
    if not len(xs):
        return floor
    if xs[0] > start:
        xs = np.insert(xs, 0, start)
        ys = np.insert(ys, 0, ys[0] if start_value is None else floor)
    if xs[-1] < budget:
        xs, ys = np.append(xs, budget), np.append(ys, ys[-1])
    return float(np.trapezoid(ys, xs) / (budget - start))


def steps_to_target(curve: pd.DataFrame, target: float, *, step: str = "step", value: str = "accuracy") -> float:
    """The first ``step`` of ``curve`` at which ``value`` >= ``target``; NaN when the run never got there within
    its budget (a censored time: give it to :func:`reached` and :func:`km_median`, never a number in its place).
    Pass only the rows that count (a diverged network's evaluations, NaN loss and class-0 accuracy, do not)."""
    ordered = curve.sort_values(step, kind="stable")
    hit = ordered.loc[pd.to_numeric(ordered[value], errors="coerce") >= target, step]
    return float(hit.iloc[0]) if len(hit) else math.nan


def reached(steps: Iterable[float]) -> str:
    """``"reached in k/n seeds"`` for per-seed times to a target (NaN: not reached within the budget)."""
    values = [float(s) for s in steps]
    hits = sum(1 for s in values if not math.isnan(s))
    return f"reached in {hits}/{len(values)} seeds"


def km_median(steps: Iterable[float], budget: float) -> float:
    """The Kaplan-Meier median time to the target over seeds, a run that never got there being right-censored at
    ``budget``: the first time at which at most half of the runs are still below the target. ``inf`` when
    fewer than half got there (the median lies beyond the budget)."""
    values = np.asarray([float(s) for s in steps], dtype=float)
    if not len(values):
        raise ValueError("km_median needs at least one run")
    hit = values[~np.isnan(values)]
    if not len(hit):
        return math.inf
    censored = np.full(int(np.isnan(values).sum()), float(budget))
    survival = stats.ecdf(stats.CensoredData(uncensored=hit, right=censored)).sf
    below = survival.quantiles[survival.probabilities <= 0.5]
    return float(below[0]) if len(below) else math.inf


# ================================================================================================== claims
CLAIM_COLUMNS = ("claim", "paper", "statement", "experiment", "measure", "effect", "ci_low", "ci_high", "seeds",
                 "arms_learned", "mde", "verdict")


@dataclass(frozen=True)
class Claim:
    """One row of the report's ``claims.csv``: a paper's claim, what measured it, and the protocol's verdict.

    ``claim`` is a short name, ``paper`` the source with its section, ``statement`` the claim in one sentence
    (the paper's words where they are short), ``experiment`` the experiment (and report section) that tested it,
    ``measure`` what the paired effect is a difference of, signed so that positive is the paper's direction."""

    claim: str
    paper: str
    statement: str
    experiment: str
    measure: str
    verdict: Verdict

    def row(self) -> dict[str, Any]:
        """The ``claims.csv`` row, columns :data:`CLAIM_COLUMNS` (plus ``reason``)."""
        return {"claim": self.claim, "paper": self.paper, "statement": self.statement,
                "experiment": self.experiment, "measure": self.measure, **self.verdict.row(),
                "reason": self.verdict.reason}
