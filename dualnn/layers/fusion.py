"""Fused blocks: two consecutive layers run as one step of a :class:`Sequential`.

A layer offers fusion with the layer after it through :meth:`Layer.fuse_next`, which
returns a :class:`FusedBlock` or ``None``. The block only changes *how* the two layers
run (one pass over the data instead of two); the layers keep their parameters, buffers
and names, and the model lists them exactly as without fusion.
"""

from __future__ import annotations


class FusedBlock:
    """Two or more consecutive layers that :class:`Sequential` runs as one step.

    Subclasses implement :meth:`forward` and :meth:`backward` with the same meaning as a
    :class:`Layer`'s (``forward`` maps the first layer's input to the last layer's
    output; ``backward`` adds every covered layer's parameter gradients and returns
    ``dL/dx`` of the first layer's input), and declare the optional keywords they
    accept in :attr:`forward_options` and :attr:`backward_options`, as a layer does.

    Parameters
    ----------
    *layers : Layer
        The covered layers, first to last; they stay the model's layers.
    """

    forward_options = frozenset()
    backward_options = frozenset()

    def __init__(self, *layers):
        self.layers = tuple(layers)

    @property
    def name(self):
        return type(self).__name__

    def output_shape(self, input_shape):
        """Shape of the block's output for an input of shape ``input_shape``."""
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def forward(self, x, training=False, **options):
        raise NotImplementedError(f"{self.name} does not implement forward")

    def backward(self, dy, **options):
        raise NotImplementedError(f"{self.name} does not implement backward")

    def __repr__(self):
        return f"{self.name}({', '.join(repr(layer) for layer in self.layers)})"
