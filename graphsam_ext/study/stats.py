"""Paired comparison of an optimizer with the baseline across seeds.

A seed fixes the split, the initial weights and the batch order for every optimizer, so the
cells of two optimizers on one seed form a pair and the test is on the per-seed differences.
The p-value comes from a two-sided paired t-test when SciPy is installed (``scipy.stats``'s t
distribution), otherwise from a two-sided sign-flip permutation test written with numpy: under
the null hypothesis each difference is as likely to have either sign, so the p-value is the share
of the 2^n sign patterns whose mean difference is at least as far from zero as the observed one
(enumerated exactly up to ``EXACT_LIMIT`` pairs, sampled beyond).
"""
from __future__ import annotations

import math

import numpy as np

T_TEST, SIGN_FLIP = "paired t-test", "sign-flip permutation test"
EXACT_LIMIT = 16
SAMPLES = 100_000


def default_method() -> str:
    """The test :func:`paired_test` uses when none is asked for: the t-test where SciPy is
    installed, the sign-flip test otherwise."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return SIGN_FLIP
    return T_TEST


def t_statistic(diffs) -> float:
    """mean(d) / (sd(d) / sqrt(n)) with the sample standard deviation; NaN below two pairs,
    +-inf when every difference is the same non-zero number."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n < 2:
        return math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return math.nan if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / (sd / math.sqrt(n))


def t_test_p(diffs) -> float:
    """Two-sided p-value of the paired t-test (needs SciPy)."""
    from scipy.stats import t as t_dist

    t = t_statistic(diffs)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return float(2.0 * t_dist.sf(abs(t), df=len(diffs) - 1))


def sign_flip_p(diffs, *, seed: int = 0) -> float:
    """Two-sided p-value of the sign-flip permutation test of mean(d) = 0."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    if n <= EXACT_LIMIT:
        patterns = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
        signs = 1.0 - 2.0 * patterns
    else:
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(SAMPLES, n))
    means = np.abs(signs @ d) / n
    # a relative tolerance so that sign patterns equal to the observed one up to rounding count
    hits = int(np.count_nonzero(means >= observed * (1 - 1e-12) - 1e-15))
    if n <= EXACT_LIMIT:
        return hits / signs.shape[0]
    return (hits + 1) / (signs.shape[0] + 1)


def paired_test(diffs, method: str | None = None) -> dict:
    """Mean, sample standard deviation, t statistic and two-sided p-value of paired differences
    (NaN below two pairs).

    method: :data:`T_TEST` or :data:`SIGN_FLIP` (default :func:`default_method`)."""
    method = method or default_method()
    if method not in (T_TEST, SIGN_FLIP):
        raise ValueError(f"method must be {T_TEST!r} or {SIGN_FLIP!r}, got {method!r}")
    d = [float(x) for x in diffs]
    n = len(d)
    out = {"n": n, "mean": float(np.mean(d)) if d else math.nan,
           "std": float(np.std(d, ddof=1)) if n > 1 else math.nan,
           "t": t_statistic(d), "method": method}
    if n < 2:  # one pair cannot tell a difference from noise
        out["p"] = math.nan
    elif method == T_TEST:
        out["p"] = t_test_p(d)
    else:
        out["p"] = sign_flip_p(d)
        out["exact"] = n <= EXACT_LIMIT
    return out
