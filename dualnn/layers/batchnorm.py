"""Batch normalization over the batch axis."""

from __future__ import annotations

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
            y, self._mean, self._invstd = b.batchnorm_forward_train(
                x, self.gamma.data, self.beta.data, self.running_mean, self.running_var,
                self.eps, self.momentum, relu=relu, out=out)
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
