"""Is a method's difference from the baseline larger than the seed noise? Welch's interval over seeds.

A table of means ± std leaves the reader to judge overlap by eye; with three seeds a side that is
easy to get wrong either way. Welch's t interval for the difference of two means (unequal
variances) is the textbook answer and needs only each cell's mean, sample std and run count.
Pure Python (no SciPy): Student's t CDF through the regularised incomplete beta function
(Numerical Recipes' continued fraction), its quantile by bisection.

The interval covers the seed-to-seed variation of training only: the test images are the same for
every run, so it says nothing about how the numbers carry over to other test data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (df need not be an integer)."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection (monotone CDF; 200 halvings reach float precision)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > p:
        low *= 2.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if student_t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


@dataclass(frozen=True)
class Difference:
    """``mean`` of (method − baseline); ``low``/``high`` its interval, None where a side has a single run."""

    mean: float
    low: float | None
    high: float | None
    df: float | None

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes zero."""
        return self.low is not None and self.high is not None and (self.low > 0.0 or self.high < 0.0)


def welch_difference(mean: float, std: float | None, n: int, base_mean: float, base_std: float | None, base_n: int,
                     level: float = 0.95) -> Difference:
    """Welch's ``level`` interval for mean − base_mean from two samples' means, sample stds and sizes."""
    diff = mean - base_mean
    if n < 2 or base_n < 2 or std is None or base_std is None:
        return Difference(diff, None, None, None)
    var, base_var = std * std / n, base_std * base_std / base_n
    se2 = var + base_var
    if se2 == 0.0:  # both samples constant: no spread to test against
        return Difference(diff, diff, diff, None)
    df = se2 * se2 / (var * var / (n - 1) + base_var * base_var / (base_n - 1))
    half = student_t_quantile(0.5 + level / 2.0, df) * math.sqrt(se2)
    return Difference(diff, diff - half, diff + half, df)
