"""Batch normalization over the batch axis."""

from __future__ import annotations

from .. import collectives
from ..errors import ConfigurationError, ShapeError
from .base import Layer
from .fusion import FusedBlock


class BatchNorm(Layer):
    r"""Batch normalization of each feature, as ``torch.nn.BatchNorm1d``.

    Training: :math:`\hat x = (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon}`,
    :math:`y = \gamma \hat x + \beta`, with the batch mean and *biased* batch variance;
    the running statistics move as ``running = (1 - momentum) running + momentum batch``
    using the *unbiased* batch variance. Evaluation uses the running statistics.

    The classic notes write the denominator as :math:`\sigma + \epsilon`; dualnn, like
    PyTorch and the original paper, puts :math:`\epsilon` inside the square root, which
    bounds the scale by :math:`1/\sqrt{\epsilon}` even for a constant feature.

    Parameters
    ----------
    num_features : int
        Number of features ``c`` of the ``(batch, c)`` input.
    eps : float
        Added to the variance, default 1e-5.
    momentum : float
        Weight of the newest batch in the running averages, default 0.1.
    dtype : {"float32", "float64"}
    ghost_batch_size : int, optional
        Ghost batch norm (Hoffer et al., 2017): in training, rows ``0..g-1``,
        ``g..2g-1``, ... are each normalized with their own mean and variance, and the
        running statistics move once per ghost batch, in order, exactly as if the ghost
        batches had been consecutive batches of an ordinary batch norm (PyTorch's
        ``BatchNorm1d`` fed one chunk at a time). A last chunk of one row (no variance)
        joins the chunk before it. ``None``: the whole batch is one batch.
    sync : bool
        Synchronized batch norm for data-parallel training: after
        :func:`dualnn.distributed.init`, the batch statistics are those of every rank's
        rows together (:func:`dualnn.distributed.sync_batchnorm_stats`, Chan's merge;
        normalized with ``m2 / n``, running variance from ``m2 / (n - 1)``), and backward
        all-reduces ``sum(dy)`` and ``sum(dy * xhat)`` in one buffer, so every rank's
        ``dx`` is that of the global batch. ``gamma.grad`` and ``beta.grad`` get this
        rank's share only (the distributed optimizer averages them over the ranks, as
        for any parameter). In a job of one process (before ``init``) it is exactly an
        ordinary batch norm. Cannot be combined with ``ghost_batch_size``.

    Attributes
    ----------
    gamma, beta : Parameter, shape (c,)
        Scale (starts at 1) and shift (starts at 0).
    running_mean, running_var : array, shape (c,)
        Buffers, starting at 0 and 1.

    Raises
    ------
    ShapeError
        In training on a batch of one row (the batch variance is undefined), as PyTorch.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype="float32",
                 ghost_batch_size=None, sync=False):
        super().__init__(dtype=dtype)
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ConfigurationError(
                f"BatchNorm: num_features must be a positive int, got {num_features!r}")
        if not eps > 0:
            raise ConfigurationError(f"BatchNorm: eps must be > 0, got {eps!r}")
        if not 0 <= momentum <= 1:
            raise ConfigurationError(f"BatchNorm: momentum must be in [0, 1], got {momentum!r}")
        if ghost_batch_size is not None and (
                isinstance(ghost_batch_size, bool) or not isinstance(ghost_batch_size, int)
                or ghost_batch_size < 2):
            raise ConfigurationError(f"BatchNorm: ghost_batch_size must be an int >= 2 or "
                                     f"None, got {ghost_batch_size!r}")
        if not isinstance(sync, bool):
            raise ConfigurationError(f"BatchNorm: sync must be True or False, got {sync!r}")
        if sync and ghost_batch_size is not None:
            raise ConfigurationError("BatchNorm: sync=True and ghost_batch_size cannot be "
                                     "combined (choose the statistics' scope: all ranks "
                                     "or ghost batches)")
        self.num_features = num_features
        self.ghost_batch_size = ghost_batch_size
        self.sync = sync
        self.eps = float(eps)
        self.momentum = float(momentum)
        shape = (num_features,)
        xp = self.xp
        self.add_parameter("gamma", xp.ones(shape, dtype=self.backend.dtype(dtype)))
        self.add_parameter("beta", self.backend.zeros(shape, dtype))
        self.add_buffer("running_mean", self.backend.zeros(shape, dtype))
        self.add_buffer("running_var", xp.ones(shape, dtype=self.backend.dtype(dtype)))
        self._clear_cache()

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "dtype": self.dtype, "ghost_batch_size": self.ghost_batch_size,
                "sync": self.sync}

    def _clear_cache(self):
        self._x = self._mean = self._invstd = None
        self._stats_kept = None  # (mean, invstd) arrays reused by training forwards
        self._chunks = None  # ghost batches: [(start, stop, mean, invstd)]
        self._synced = None  # sync: global row count of the last training forward
        self._training = False
        self._relu = False
        self._sums = None  # (2c,): sum dy, sum dy * xhat (kept: a step allocates nothing)
        self._moments = None  # sync: (c,) this rank's mean, (2c,) sums of deviations

    forward_options = frozenset({"out"})
    backward_options = frozenset({"overwrite"})

    def forward(self, x, training=False, out=None):
        """``x``: (batch, num_features) -> same shape.

        ``out`` is an optional preallocated output of ``x``'s shape and dtype.
        """
        return self._forward(x, training, False, out)

    def fuse_next(self, next_layer):
        """Fuse with a following ReLU (a layer whose ``output_activation()`` is
        ``("relu", 0.0)``): the ReLU is applied inside batch norm's passes."""
        offer = getattr(next_layer, "output_activation", None)
        if offer is not None and offer() == ("relu", 0.0):
            return BatchNormReLU(self, next_layer)
        return None

    def _forward(self, x, training, relu, out):
        """Forward, followed by ``max(., 0)`` when ``relu``; the next backward then
        expects the gradient of the ReLU's output."""
        self._check_input(x, self.num_features)
        b = self.backend
        self._x = x
        self._training = bool(training)
        self._relu = bool(relu)
        if training:
            if x.shape[0] < 2:
                raise ShapeError(
                    f"{self.name}: expected more than 1 row per batch in training (the batch "
                    f"variance of one row is undefined), got input shape {tuple(x.shape)}; "
                    "use a larger batch, or drop the last partial batch")
            self._chunks = self._synced = None
            if self.ghost_batch_size is not None and x.shape[0] > self.ghost_batch_size:
                return self._forward_ghost(x, relu, out)
            if self.sync and _distributed_size() > 1:
                return self._forward_sync(x, relu, out)
            kept = self.__dict__.get("_stats_kept")
            extra = {} if kept is None else {"stats_out": kept}
            y, self._mean, self._invstd = b.batchnorm_forward_train(
                x, self.gamma.data, self.beta.data, self.running_mean, self.running_var,
                self.eps, self.momentum, relu=relu, out=out, **extra)
            if kept is None and b.device != "cpu" and getattr(b, "reuses_buffers", False):
                # the layer's own statistics arrays: the next steps write into these two
                self._stats_kept = (self._mean, self._invstd)
        else:
            y = b.batchnorm_forward_eval(x, self.gamma.data, self.beta.data, self.running_mean,
                                         self.running_var, self.eps, relu=relu, out=out)
            self._mean = self.running_mean
            self._invstd = 1 / self.xp.sqrt(self.running_var + self.eps)
        return y

    def backward(self, dy, *, overwrite=False):
        r"""Adds :math:`d\gamma = \sum dy\,\hat x`, :math:`d\beta = \sum dy`; returns dx.

        With ``overwrite``, ``dx`` is written into ``dy``.
        """
        out = dy if overwrite else None
        x = self._x
        self._check_grad(dy, x)
        if self._training and self._chunks is not None:
            return self._backward_ghost(dy, out)
        if self._training and self._synced is not None:
            return self._backward_sync(dy, out)
        if self._training:
            dx, dgamma, dbeta = self.backend.batchnorm_backward(
                dy, x, self.gamma.data, self.beta.data, self._mean, self._invstd,
                relu=self._relu, out=out)
        else:
            xhat = (x - self._mean) * self._invstd
            if self._relu:
                y = xhat * self.gamma.data + self.beta.data
                dy = self.xp.where(y > 0, dy, self.xp.zeros_like(dy))
            sums = self._batch_sums(dy, xhat)
            dbeta, dgamma = sums[:self.num_features], sums[self.num_features:]
            dx = dy * (self.gamma.data * self._invstd)
        self.gamma.grad += dgamma
        self.beta.grad += dbeta
        return dx

    def _batch_sums(self, dy, xhat):
        """``(2c,)``: ``sum dy`` then ``sum dy * xhat`` over the batch, by the backend's
        column-sum reduction into a buffer the layer keeps."""
        if self._sums is None:
            self._sums = self.backend.empty((2 * self.num_features,), self.dtype)
        return self.backend.column_sums2(dy, xhat, out=self._sums)

    # ------------------------------------------------------------------ ghost batches
    def _ghost_bounds(self, n):
        g = self.ghost_batch_size
        bounds = [(s, min(s + g, n)) for s in range(0, n, g)]
        if bounds[-1][1] - bounds[-1][0] < 2:  # one row has no variance: join the previous
            bounds[-2:] = [(bounds[-2][0], n)]
        return bounds

    def _forward_ghost(self, x, relu, out):
        b = self.backend
        y = out if out is not None else b.empty(tuple(x.shape), self.dtype)
        chunks = []
        for start, stop in self._ghost_bounds(x.shape[0]):
            yc, mean, invstd = b.batchnorm_forward_train(
                x[start:stop, :], self.gamma.data, self.beta.data, self.running_mean,
                self.running_var, self.eps, self.momentum, relu=relu)
            y[start:stop, :] = yc
            chunks.append((start, stop, mean, invstd))
        self._chunks = chunks
        return y

    def _backward_ghost(self, dy, out):
        b = self.backend
        x = self._x
        dx = out if out is not None else b.empty(tuple(x.shape), self.dtype)
        for start, stop, mean, invstd in self._chunks:
            dxc, dgamma, dbeta = b.batchnorm_backward(
                dy[start:stop, :], x[start:stop, :], self.gamma.data, self.beta.data, mean,
                invstd, relu=self._relu)
            dx[start:stop, :] = dxc
            self.gamma.grad += dgamma
            self.beta.grad += dbeta
        return dx

    # ------------------------------------------------------------------ synchronized
    def _forward_sync(self, x, relu, out):
        xp = self.xp
        b = self.backend
        n, c = x.shape
        if self._moments is None:
            self._moments = (b.empty((c,), self.dtype), b.empty((2 * c,), self.dtype))
        mean, sums = self._moments
        b.sum_rows_into(x, mean, overwrite=True)
        mean /= n
        centered = x - mean
        m2 = b.column_sums2(centered, centered, out=sums)[c:]
        total, mean, m2 = collectives.sync_moments(n, mean, m2)
        total = float(total)
        invstd = 1 / xp.sqrt(m2 / total + self.eps)
        y = (x - mean) * (invstd * self.gamma.data) + self.beta.data
        if relu:
            y = xp.where(y < 0, xp.zeros_like(y), y)
        m = self.momentum
        self.backend.assign(self.running_mean, (1 - m) * self.running_mean + m * mean)
        self.backend.assign(self.running_var,
                            (1 - m) * self.running_var + m * (m2 / (total - 1)))
        self._mean, self._invstd, self._synced = mean, invstd, total
        if out is not None:
            out[...] = y
            return out
        return y

    def _backward_sync(self, dy, out):
        xp = self.xp
        c = self.num_features
        xhat = (self._x - self._mean) * self._invstd
        if self._relu:
            y = xhat * self.gamma.data + self.beta.data
            dy = xp.where(y > 0, dy, xp.zeros_like(dy))
        buf = self._batch_sums(dy, xhat)  # [sum dy, sum dy * xhat]
        self.gamma.grad += buf[c:]  # this rank's share; the optimizer averages over ranks
        self.beta.grad += buf[:c]
        collectives.allreduce_sum_(buf)
        total = self._synced
        dx = (self.gamma.data * self._invstd / total) * (
            total * dy - buf[:c] - xhat * buf[c:])
        if out is not None:
            out[...] = dx
            return out
        return dx


def _distributed_size():
    """Ranks of the running job (1 before :func:`dualnn.distributed.init`)."""
    return collectives.size()


class BatchNormReLU(FusedBlock):
    """A :class:`BatchNorm` and the ReLU after it, the ReLU applied in batch norm's passes.

    The ReLU layer itself does not run (it keeps no state from a fused forward).
    """

    forward_options = frozenset({"out"})
    backward_options = frozenset({"overwrite"})

    def forward(self, x, training=False, out=None):
        return self.layers[0]._forward(x, training, True, out)

    def backward(self, dy, *, overwrite=False):
        return self.layers[0].backward(dy, overwrite=overwrite)
