"""Finite-difference gradient checks for layers, models and losses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ShapeError


@dataclass
class TensorReport:
    """Comparison of one tensor's analytic and numerical gradients.

    Attributes
    ----------
    name : str
        ``"input"`` or the parameter's name.
    relative_error : float
        ``||g_num - g|| / max(||g_num||, ||g||)`` (0 when both are zero).
    worst_index : tuple
        Index of the element with the largest absolute difference.
    worst_analytic, worst_numerical : float
        The two gradients at that element.
    """

    name: str
    relative_error: float
    worst_index: tuple
    worst_analytic: float
    worst_numerical: float


@dataclass
class GradcheckReport:
    """Per-tensor reports and the overall verdict of :func:`gradcheck`."""

    tensors: list = field(default_factory=list)
    tolerance: float = 1e-7

    @property
    def max_error(self):
        return max((t.relative_error for t in self.tensors), default=0.0)

    @property
    def passed(self):
        return self.max_error < self.tolerance

    def __bool__(self):
        return self.passed

    def __str__(self):
        lines = [f"gradcheck {'passed' if self.passed else 'FAILED'} "
                 f"(max relative error {self.max_error:.3e}, tolerance {self.tolerance:.0e})"]
        for t in self.tensors:
            lines.append(f"  {t.name:<20} rel.err {t.relative_error:.3e}  worst at "
                         f"{t.worst_index}: analytic {t.worst_analytic:.6e}, numerical "
                         f"{t.worst_numerical:.6e}")
        return "\n".join(lines)


def _compare(name, analytic, numerical):
    diff = numerical - analytic
    denom = max(np.linalg.norm(numerical), np.linalg.norm(analytic))
    # Both gradients numerically zero (e.g. a bias feeding batch norm): report the
    # absolute difference instead of dividing noise by noise.
    rel = float(np.linalg.norm(diff) / denom) if denom > 1e-9 else float(np.linalg.norm(diff))
    worst = np.unravel_index(int(np.argmax(np.abs(diff))), diff.shape) if diff.size else ()
    return TensorReport(name, rel, tuple(int(i) for i in worst),
                        float(analytic[worst]) if diff.size else 0.0,
                        float(numerical[worst]) if diff.size else 0.0)


def gradcheck(layer, x, loss_fn=None, target=None, *, eps=1e-6, training=True,
              tolerance=1e-7, check_input=True, seed=0):
    """Check a layer's (or model's) backward against centered finite differences.

    The scalar checked is ``loss_fn(layer(x), target)`` or, without a loss, the fixed
    random projection ``sum(layer(x) * R)``. Parameters and the input must be float64.
    Layers that draw random numbers in training (dropout) are re-seeded before every
    evaluation so each sees the same mask.

    Parameters
    ----------
    layer : Layer
    x : array, shape (batch, features), float64, on the layer's device
    loss_fn : Loss, optional
    target : array, optional
        Target for ``loss_fn``.
    eps : float
        Finite-difference step.
    training : bool
        Forward mode used.
    tolerance : float
        Largest normwise relative error that passes.
    check_input : bool
        Also check ``dL/dx``.

    Returns
    -------
    GradcheckReport
        Per tensor: the normwise relative error ``||g_num - g|| / max(||g_num||, ||g||)``
        and the worst element.
    """
    backend = layer.backend
    saved_state = layer.state_dict()
    for param in layer.parameters():
        if param.dtype != "float64":
            raise ShapeError(f"gradcheck needs float64 parameters; {param.name} is {param.dtype}")
    host_x = np.array(backend.to_host(x), dtype=np.float64)
    rng_state = backend.get_rng_state()
    projection = None

    def scalar(x_host):
        backend.set_rng_state(rng_state)
        nonlocal projection
        y = layer.forward(backend.asarray(x_host, "float64"), training=training)
        if loss_fn is not None:
            return float(backend.to_host(loss_fn.forward(y, target))), None
        if projection is None:
            projection = np.random.default_rng(seed).standard_normal(tuple(y.shape))
        return float(np.sum(backend.to_host(y) * projection)), y

    layer.zero_grad()
    value, y = scalar(host_x)
    if loss_fn is not None:
        dy = loss_fn.backward()
    else:
        dy = backend.asarray(projection, "float64")
    dx = backend.to_host(layer.backward(dy))
    report = GradcheckReport(tolerance=tolerance)

    for name, param in layer.named_parameters():
        analytic = np.array(backend.to_host(param.grad), dtype=np.float64)
        numerical = np.zeros_like(analytic)
        original = np.array(backend.to_host(param.data), dtype=np.float64)
        flat = original.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            backend.assign(param.data, backend.asarray(original, "float64"))
            plus, _ = scalar(host_x)
            flat[i] = old - eps
            backend.assign(param.data, backend.asarray(original, "float64"))
            minus, _ = scalar(host_x)
            flat[i] = old
            numerical.reshape(-1)[i] = (plus - minus) / (2 * eps)
        backend.assign(param.data, backend.asarray(original, "float64"))
        report.tensors.append(_compare(name, analytic, numerical))

    if check_input:
        numerical = np.zeros_like(host_x)
        flat = host_x.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            plus, _ = scalar(host_x)
            flat[i] = old - eps
            minus, _ = scalar(host_x)
            flat[i] = old
            numerical.reshape(-1)[i] = (plus - minus) / (2 * eps)
        report.tensors.append(_compare("input", np.asarray(dx, dtype=np.float64), numerical))
    layer.load_state_dict(saved_state)  # undo running-statistics updates of the probes
    return report
