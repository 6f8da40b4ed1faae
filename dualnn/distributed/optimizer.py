"""``DistributedOptimizer``: average gradients over the ranks, then step."""

from __future__ import annotations

from . import runtime
from .errors import NotInitializedError

_OWN = ("optimizer", "_context")


class DistributedOptimizer:
    """Wrap a dualnn optimizer for data-parallel training.

    :meth:`step` first averages every gradient over the ranks with ONE all-reduce of a
    flat buffer per dtype (:meth:`TrainingContext.allreduce_gradients`), then calls the
    wrapped optimizer's ``step``. Everything else (``zero_grad``, ``state_dict``,
    ``load_state_dict``, ``lr``, ``params`` ...) is the wrapped optimizer's, read and
    written through this object.

    Parameters
    ----------
    optimizer : Optimizer

    Raises
    ------
    NotInitializedError
        When :func:`dualnn.distributed.init` has not been called.

    Examples
    --------
    >>> dn.distributed.init()                                      # doctest: +SKIP
    >>> opt = dn.distributed.DistributedOptimizer(dn.optim.SGD(model.parameters(), lr=0.1))
    >>> model.backward(loss_fn.backward()); opt.step(); opt.zero_grad()   # doctest: +SKIP
    """

    def __init__(self, optimizer):
        from .context import current

        context = current()
        if context is None:
            raise NotInitializedError(
                "DistributedOptimizer needs dn.distributed.init() first (run the program "
                "with mpiexec -n N python -m mpi4py script.py)")
        if isinstance(optimizer, DistributedOptimizer):
            optimizer = optimizer.optimizer
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "_context", context)

    def step(self, *args, **kwargs):
        """Average the gradients over all ranks, then run the wrapped ``step``."""
        self._context.allreduce_gradients(self.optimizer.params)
        return self.optimizer.step(*args, **kwargs)

    def zero_grad(self):
        return self.optimizer.zero_grad()

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        return self.optimizer.load_state_dict(state_dict)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "optimizer"), name)

    def __setattr__(self, name, value):
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r}, ranks={runtime.size()})"
