"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW, RMSprop, Adagrad, Adadelta, LARS, LAMB.

Names, keyword arguments, defaults and update rules follow ``torch.optim``. Every
optimizer also takes the keyword-only options ``l1`` (L1 penalty), ``max_norm``
(max-norm constraint on each output unit's incoming weights) and ``clip_grad_norm``
(global gradient-norm clipping), each of which installs a hook (:mod:`dualnn.optim.hooks`);
``opt.add_hook(hook)`` adds others. See :class:`Optimizer`.

>>> opt = dn.optim.Adam(model.parameters(), lr=1e-3)          # doctest: +SKIP
>>> opt.step(); opt.zero_grad()                               # doctest: +SKIP
>>> dn.optim.get("adamw")                                     # doctest: +SKIP
<class 'dualnn.optim.adam.AdamW'>
"""

from . import hooks
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import Optimizer, get
from .constraints import clip_grad_norm_
from .hooks import GradientClipping, L1Penalty, MaxNorm, OptimizerHook
from .hyperparameters import Hyperparameter, Hyperparameters
from .lamb import LAMB
from .lars import LARS
from .rmsprop import RMSprop
from .scaling import polynomial_decay, scale_lr
from .sgd import SGD

__all__ = [
    "LAMB",
    "LARS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "GradientClipping",
    "Hyperparameter",
    "Hyperparameters",
    "L1Penalty",
    "MaxNorm",
    "Optimizer",
    "OptimizerHook",
    "RMSprop",
    "clip_grad_norm_",
    "get",
    "hooks",
    "polynomial_decay",
    "scale_lr",
]
