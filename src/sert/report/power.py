"""Minimum detectable difference (MDD) of a paired comparison: the smallest true accuracy
difference the design detects with 80% power in a two-sided 5% test, computed from what was observed.

For two arms evaluated on the same ``n`` questions with the same ``S`` seeds, ``d[s][q]`` is arm a's minus arm
b's 0/1 correctness on question q under seed s (-1, 0 or +1: a question counts only when the arms disagree,
the discordant pairs). The estimate is the mean of ``d``; its standard error is taken as

    SE² = var_q(d̄_q) / n  +  var_s(d̄_s) / S

* ``d̄_q`` = the question's difference averaged over the seeds, ``var_q`` its variance over the questions
  (population variance): the question-sampling noise. With one seed it is ``p_disc − D²``, ``p_disc`` the
  share of discordant questions and ``D`` the mean difference (McNemar's setting).
* ``d̄_s`` = a seed's mean difference, ``var_s`` the sample variance over the seeds (ddof 1; 0 for one seed):
  the training-seed noise. The questions' noise is in it too, so the sum is slightly conservative.

    MDD = (z_{1−α/2} + z_{power}) · SE = (1.95996 + 0.84162) · SE = 2.80158 · SE

Worked example (``tests/test_report_budgets_power.py``): one seed, 100 questions, 12 where only a is right and
8 where only b is right: D = 0.04, p_disc = 0.20, var_q = 0.20 − 0.04² = 0.1984, SE = √(0.1984/100) = 0.044542,
MDD = 2.80158 × 0.044542 = 0.12479, i.e. 12.48 percentage points.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def z_sum(alpha: float = 0.05, power: float = 0.8) -> float:
    """``z_{1−α/2} + z_{power}``: 2.80158 for a two-sided 5% test with 80% power."""
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def paired_se(diff: list[list[float]]) -> float:
    """Standard error of the mean of a (seeds x questions) matrix of paired differences (module docstring)."""
    seeds, n = len(diff), len(diff[0])
    per_q = [sum(diff[s][q] for s in range(seeds)) / seeds for q in range(n)]
    mean_q = sum(per_q) / n
    var_q = sum((x - mean_q) ** 2 for x in per_q) / n
    per_s = [sum(row) / n for row in diff]
    var_s = sum((x - sum(per_s) / seeds) ** 2 for x in per_s) / (seeds - 1) if seeds > 1 else 0.0
    return math.sqrt(var_q / n + var_s / seeds)


def mdd(diff: list[list[float]], alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable difference (same unit as ``diff``) at ``power`` in a two-sided ``alpha`` test."""
    return z_sum(alpha, power) * paired_se(diff)
