"""Weight initializers.

Every initializer draws on the host with the backend's seeded NumPy generator and
returns a host array; :class:`~dualnn.layers.Linear` moves it to its device. A seed
therefore gives the same model on every device.

Names accepted by ``Linear(init=...)``:

=========================================  ======================================================
``"xavier"``, ``"glorot"``                 uniform, bound ``sqrt(6 / (fan_in + fan_out))``
``"xavier_uniform"``, ...                  (aliases of the above)
``"xavier_normal"``, ``"glorot_normal"``   normal, std ``sqrt(2 / (fan_in + fan_out))``
``"he"``, ``"he_normal"``                  normal, std ``sqrt(2 / fan_in)`` (ReLU networks)
``"he_uniform"``                           uniform, bound ``sqrt(6 / fan_in)``
``"lecun"``, ``"lecun_normal"``            normal, std ``1 / sqrt(fan_in)``
``"lecun_uniform"``                        uniform, bound ``sqrt(3 / fan_in)``
``"sparse"``                               each unit gets ``connections`` (15) nonzero incoming
                                           weights drawn from N(0, 1), the rest zero
``"zeros"``                                all zeros
=========================================  ======================================================

``fan_in`` is the number of inputs of a unit, ``fan_out`` the number of units.
"""

from __future__ import annotations

import math

from .errors import ConfigurationError


def xavier_uniform(shape, rng):
    """Glorot/Xavier uniform: U(-a, a), ``a = sqrt(6 / (fan_in + fan_out))``."""
    fan_out, fan_in = shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def xavier_normal(shape, rng):
    """Glorot/Xavier normal: N(0, 2 / (fan_in + fan_out))."""
    fan_out, fan_in = shape
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def he_normal(shape, rng):
    """He/Kaiming normal: N(0, 2 / fan_in)."""
    return rng.normal(0.0, math.sqrt(2.0 / shape[1]), size=shape)


def he_uniform(shape, rng):
    """He/Kaiming uniform: U(-a, a), ``a = sqrt(6 / fan_in)``."""
    bound = math.sqrt(6.0 / shape[1])
    return rng.uniform(-bound, bound, size=shape)


def lecun_normal(shape, rng):
    """LeCun normal: N(0, 1 / fan_in)."""
    return rng.normal(0.0, 1.0 / math.sqrt(shape[1]), size=shape)


def lecun_uniform(shape, rng):
    """LeCun uniform: U(-a, a), ``a = sqrt(3 / fan_in)`` (variance 1 / fan_in)."""
    bound = math.sqrt(3.0 / shape[1])
    return rng.uniform(-bound, bound, size=shape)


def sparse(shape, rng, connections=15):
    """Sparse initialization: each unit (row) has ``min(connections, fan_in)`` nonzero
    incoming weights drawn from N(0, 1) at random positions; the rest are zero."""
    fan_out, fan_in = shape
    k = min(int(connections), fan_in)
    weights = rng.normal(0.0, 1.0, size=shape)
    keep = rng.random(shape).argsort(axis=1)[:, :k]
    mask = weights * 0.0
    for row in range(fan_out):
        mask[row, keep[row]] = 1.0
    return weights * mask


def zeros(shape, rng):
    """All zeros."""
    return rng.random(shape) * 0.0


INITIALIZERS = {
    "xavier": xavier_uniform,
    "glorot": xavier_uniform,
    "xavier_uniform": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "he": he_normal,
    "he_normal": he_normal,
    "kaiming": he_normal,
    "he_uniform": he_uniform,
    "lecun": lecun_normal,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "sparse": sparse,
    "zeros": zeros,
}


def get(init):
    """The initializer for a name in :data:`INITIALIZERS` or a callable ``(shape, rng)``."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[str(init).lower()]
    except KeyError:
        raise ConfigurationError(
            f"unknown initializer {init!r}; expected one of {sorted(INITIALIZERS)} or a "
            "callable(shape, rng)") from None
