"""Merging per-rank batch statistics with Chan's parallel formula.

Each rank holds the count ``n``, mean and ``M2`` (sum of squared deviations from its own
mean) of its rows. Two groups ``a`` and ``b`` merge as (Chan, Golub and LeVeque, 1979)::

    delta = mean_b - mean_a
    n     = n_a + n_b
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + delta**2 * n_a * n_b / n

which stays accurate when the mean is large against the spread, unlike merging sums
and sums of squares (``E[x^2] - E[x]^2`` cancels catastrophically in float32).
"""

from __future__ import annotations


def merge_moments(counts, means, m2s):
    """Fold per-group ``(count, mean, M2)`` triples, in order, into one.

    Parameters
    ----------
    counts : sequence of float, length g
    means, m2s : sequences of arrays, shape (c,) each
        Any array library; the arithmetic is elementwise.

    Returns
    -------
    (count, mean, m2)
        The statistics of all groups' rows together; ``m2 / count`` is the biased
        variance, ``m2 / (count - 1)`` the unbiased one.
    """
    n = float(counts[0])
    mean = means[0]
    m2 = m2s[0]
    for nb, mean_b, m2_b in zip(counts[1:], means[1:], m2s[1:]):
        nb = float(nb)
        if nb == 0:
            continue
        if n == 0:
            n, mean, m2 = nb, mean_b, m2_b
            continue
        total = n + nb
        delta = mean_b - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2_b + delta * delta * (n * nb / total)
        n = total
    return n, mean, m2


def sync_batchnorm_stats(comm, count, mean, m2, xp):
    """Merge this rank's batch statistics with every other rank's (one all-gather).

    Parameters
    ----------
    comm : Communicator
        For ``mean``'s device.
    count : int
        Rows this rank saw.
    mean, m2 : arrays, shape (c,)
        Per-feature mean and sum of squared deviations of this rank's rows.
    xp : array namespace of ``mean``

    Returns
    -------
    (count, mean, m2) over all ranks, identical on every rank (merged in rank order).
    """
    c = int(mean.shape[0])
    packed = xp.empty((2 * c + 1,), dtype=mean.dtype)
    packed[0] = count
    packed[1:c + 1] = mean
    packed[c + 1:] = m2
    rows = comm.allgather_array(packed)
    counts = [float(v) for v in rows[:, 0].tolist()]
    return merge_moments(counts, [rows[r, 1:c + 1] for r in range(comm.size)],
                         [rows[r, c + 1:] for r in range(comm.size)])
