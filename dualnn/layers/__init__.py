"""Layers: the building blocks of a model. All run on any backend.

Every layer follows one contract (see :class:`Layer`): ``forward(x, training)`` caches
what ``backward(dy)`` needs; ``backward`` adds parameter gradients into ``p.grad`` and
returns ``dL/dx``. Batches are rows: ``x`` has shape ``(batch, features)``. Optional
capabilities (scratch outputs, in-place backward, skipping ``dL/dx``, fusing with the next
layer into a :class:`FusedBlock`) are declared by the layer itself; see :class:`Layer`.
"""

from .activations import ELU, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh, activation
from .base import Layer, registered_layer
from .batchnorm import BatchNorm
from .dropout import Dropout
from .fusion import FusedBlock
from .linear import Linear
from .sequential import Sequential

__all__ = [
    "Layer", "Linear", "BatchNorm", "Dropout", "Sequential", "Identity", "Step", "Sigmoid",
    "Tanh", "ReLU", "LeakyReLU", "ELU", "Softmax", "activation", "registered_layer",
    "FusedBlock",
]
