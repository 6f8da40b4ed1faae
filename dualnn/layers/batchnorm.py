"""Batch normalization over the batch axis."""

from __future__ import annotations

from ..errors import ConfigurationError, ShapeError
from .base import Layer


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

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype="float32"):
        super().__init__(dtype=dtype)
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ConfigurationError(
                f"BatchNorm: num_features must be a positive int, got {num_features!r}")
        if not eps > 0:
            raise ConfigurationError(f"BatchNorm: eps must be > 0, got {eps!r}")
        if not 0 <= momentum <= 1:
            raise ConfigurationError(f"BatchNorm: momentum must be in [0, 1], got {momentum!r}")
        self.num_features = num_features
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
                "dtype": self.dtype}

    def _clear_cache(self):
        self._x = self._mean = self._invstd = None
        self._training = False
        self._relu = False

    def forward(self, x, training=False):
        """``x``: (batch, num_features) -> same shape."""
        return self.forward_fused(x, training, relu=False)

    def forward_fused(self, x, training=False, relu=False, out=None):
        """Forward, followed by ``max(., 0)`` when ``relu`` (the BatchNorm -> ReLU block).

        :class:`~dualnn.layers.Sequential` calls this for a BatchNorm directly followed by
        a ReLU, so the ReLU costs no pass of its own; the next :meth:`backward` then
        expects the gradient of the ReLU's output. ``out`` is an optional preallocated
        output of ``x``'s shape and dtype.
        """
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
            y, self._mean, self._invstd = b.batchnorm_forward_train(
                x, self.gamma.data, self.beta.data, self.running_mean, self.running_var,
                self.eps, self.momentum, relu=relu, out=out)
        else:
            y = b.batchnorm_forward_eval(x, self.gamma.data, self.beta.data, self.running_mean,
                                         self.running_var, self.eps, relu=relu, out=out)
            self._mean = self.running_mean
            self._invstd = 1 / self.xp.sqrt(self.running_var + self.eps)
        return y

    def backward(self, dy):
        r"""Adds :math:`d\gamma = \sum dy\,\hat x`, :math:`d\beta = \sum dy`; returns dx."""
        return self._backward(dy, out=None)

    def backward_overwrite(self, dy):
        return self._backward(dy, out=dy)

    def _backward(self, dy, out):
        x = self._x
        self._check_grad(dy, x)
        if self._training:
            dx, dgamma, dbeta = self.backend.batchnorm_backward(
                dy, x, self.gamma.data, self.beta.data, self._mean, self._invstd,
                relu=self._relu, out=out)
        else:
            xhat = (x - self._mean) * self._invstd
            if self._relu:
                y = xhat * self.gamma.data + self.beta.data
                dy = self.xp.where(y > 0, dy, self.xp.zeros_like(dy))
            dgamma = self.xp.sum(dy * xhat, axis=0)
            dbeta = self.xp.sum(dy, axis=0)
            dx = dy * (self.gamma.data * self._invstd)
        self.gamma.grad += dgamma
        self.beta.grad += dbeta
        return dx
