"""Getting training batches onto the model's device: :func:`feed`.

Two ways, chosen per ``fit`` call:

- **Device-resident** (a GPU, the data fits in ``RESIDENT_FRACTION`` of the free device
  memory, no input noise): ``X`` and ``y`` are uploaded once, cast to the model's dtype.
  Each epoch the batch order is drawn exactly as :class:`~dualnn.data.DataLoader` draws
  it (same host generator, same sorted batches, so results equal the streamed path's),
  uploaded as one index array, and every batch is gathered on the device into a slot
  reused from step to step (``take(..., out=slot)``). Without shuffling a batch is a view
  of the resident rows. Indices are always built here, never taken from users: CuPy's
  ``take`` wraps out-of-range indices instead of failing.
- **Streamed** (otherwise, and on the CPU): the DataLoader prepares host batches
  (memory-mapped reads, casts) in a background thread one batch ahead, so loading
  overlaps compute (on the CPU only for memory-mapped data: rows of an array in memory
  are gathered inline). On a GPU each batch then goes through double-buffered pinned host
  slots, copied on a separate stream with events ordering copy and compute
  (:class:`PinnedFeeder`); on the CPU it is used as is. With ``input_noise`` the
  batches are prepared in the training thread, so the noise draws keep their order in
  the shared seeded generator.
"""

from __future__ import annotations

import inspect
import queue
import threading

import numpy as np

from .checks import to_device

RESIDENT_FRACTION = 0.5
"""Largest share of the device's free memory a dataset may take to be kept there."""

_DONE = object()


def feed(backend, loader, dtype, labels, resident=None):
    """A per-fit batch source: ``iter(feed(...))`` runs one epoch of device batches.

    Parameters
    ----------
    backend : backend of the model
    loader : DataLoader
    dtype : str
        The model's float dtype; inputs (and float targets) are cast to it.
    labels : bool
        ``y`` holds integer class labels (kept integer).
    resident : bool or None
        Force the device-resident path on or off; None decides by size.

    Returns
    -------
    ResidentFeeder or StreamedFeeder
        Iterating yields ``(xd, yd, rows)`` per batch, in the loader's order. A resident
        batch lives in a reused slot: it is valid until the next batch is drawn.
    """
    if resident is None:
        resident = _fits(backend, loader, dtype)
    if resident and backend.device != "cpu" and not loader.input_noise and loader.y is not None:
        return ResidentFeeder(backend, loader, dtype, labels)
    if getattr(backend, "cupy", None) is not None and loader.y is not None:
        return PinnedFeeder(backend, loader, dtype, labels)
    return StreamedFeeder(backend, loader, dtype, labels)


def _fits(backend, loader, dtype):
    free = backend.free_device_bytes()
    if free is None or loader.input_noise or loader.y is None:
        return False
    rows = loader.n
    x_bytes = rows * int(np.prod(loader.X.shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    y_bytes = rows * int(np.prod(loader.y.shape[1:], dtype=np.int64)) * 8
    return x_bytes + y_bytes <= RESIDENT_FRACTION * free


class ResidentFeeder:
    """The whole dataset on the device; batches gathered into reused slots."""

    resident = True

    def __init__(self, backend, loader, dtype, labels):
        self.backend, self.loader = backend, loader
        self.X = backend.asarray(np.asarray(loader.X), dtype)
        self.y = to_device(backend, np.asarray(loader.y), labels, dtype)
        self._slots = {}
        self._index = None

    def _slot(self, kind, source, rows):
        key = (kind, rows)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self.backend.empty((rows,) + tuple(source.shape[1:]),
                                                         str(source.dtype))
        return slot

    def __iter__(self):
        loader, backend, xp = self.loader, self.backend, self.backend.xp
        sizes = loader.batch_sizes()
        order = loader._generator().permutation(loader.n) if loader.shuffle else None
        if order is not None:
            host = np.empty(sum(sizes), dtype=np.int64)
            start = 0
            for size in sizes:  # as DataLoader: each batch's rows in increasing order
                host[start:start + size] = np.sort(order[start:start + size])
                start += size
            if self._index is None or self._index.shape[0] != host.shape[0]:
                self._index = backend.empty(host.shape, "int64")
            backend.copy_to_device(host, self._index)
        start = 0
        for size in sizes:
            stop = start + size
            if order is None:
                yield self.X[start:stop], self.y[start:stop], size
            else:
                index = self._index[start:stop]
                xd = xp.take(self.X, index, axis=0, out=self._slot("x", self.X, size))
                yd = xp.take(self.y, index, axis=0, out=self._slot("y", self.y, size))
                yield xd, yd, size
            start = stop


class StreamedFeeder:
    """Host batches from the DataLoader (prepared one ahead in a thread), then copied."""

    resident = False

    def __init__(self, backend, loader, dtype, labels):
        self.backend, self.loader, self.dtype, self.labels = backend, loader, dtype, labels

    def __iter__(self):
        batches = _prefetch(self.loader) if _in_background(self.backend, self.loader) else \
            iter(self.loader)
        backend = self.backend
        for xb, yb in batches:
            yield (backend.asarray(xb, self.dtype),
                   to_device(backend, yb, self.labels, self.dtype), len(xb))


class PinnedFeeder(StreamedFeeder):
    """Streamed batches on a GPU through two pinned host slots and two device slots.

    The host batch is copied into a page-locked slot, then to its device slot on a
    separate copy stream; the compute stream waits on an event recorded after that copy,
    and a slot is refilled only once the step that read it has passed (an event
    recorded on the compute stream when the next batch is requested). While step ``k``
    computes, batch ``k + 1`` crosses the bus.
    """

    def __init__(self, backend, loader, dtype, labels):
        super().__init__(backend, loader, dtype, labels)
        cuda = backend.cupy.cuda
        with cuda.Device(backend.device_id):
            self.copy_stream = cuda.Stream(non_blocking=True)
        self._slots = [{}, {}]

    def _slot(self, parity, xb, yb):
        slots = self._slots[parity]
        key = (xb.shape, yb.shape, str(yb.dtype))
        slot = slots.get(key)
        if slot is None:
            cuda, backend = self.backend.cupy.cuda, self.backend
            slot = {"x_host": _pinned(cuda, xb.shape, np.dtype(self.dtype)),
                    "y_host": _pinned(cuda, yb.shape, yb.dtype),
                    "x": backend.empty(xb.shape, self.dtype),
                    "y": backend.empty(yb.shape, str(yb.dtype)),
                    "copied": None, "released": None}
            slots[key] = slot
        return slot

    def __iter__(self):
        cuda = self.backend.cupy.cuda
        batches = _prefetch(self.loader) if _in_background(self.backend, self.loader) else \
            iter(self.loader)
        compute = cuda.get_current_stream()
        previous = None
        for parity, (xb, yb) in enumerate(batches):
            if previous is not None:  # the step that used the previous slot is enqueued
                previous["released"] = cuda.Event(disable_timing=True)
                previous["released"].record(compute)
            if not self.labels:
                yb = yb.astype(self.dtype, copy=False)
            slot = self._slot(parity % 2, xb, yb)
            if slot["copied"] is not None and not slot["copied"].done:
                slot["copied"].synchronize()  # its last copy (two batches ago) still runs
            np.copyto(slot["x_host"], xb, casting="unsafe")
            np.copyto(slot["y_host"], yb)
            with cuda.Device(self.backend.device_id):
                if slot["released"] is not None:
                    self.copy_stream.wait_event(slot["released"])
                slot["x"].set(slot["x_host"], stream=self.copy_stream)
                slot["y"].set(slot["y_host"], stream=self.copy_stream)
                slot["copied"] = cuda.Event(disable_timing=True)
                slot["copied"].record(self.copy_stream)
                compute.wait_event(slot["copied"])
            previous = slot
            yield slot["x"], slot["y"], len(xb)


def _in_background(backend, loader):
    """Prepare batches in a thread: on a GPU always (host work overlaps device work), on
    the CPU for memory-mapped data (reads overlap compute; gathering rows of an array in
    memory is cheaper than the hand-over, and would hold extra batches). Never with
    input noise, whose draws must keep their order in the shared generator."""
    if loader.input_noise:
        return False
    return backend.device != "cpu" or isinstance(loader.X, np.memmap)


def _pinned(cuda, shape, dtype):
    """A NumPy array of ``shape``/``dtype`` in page-locked host memory."""
    count = int(np.prod(shape, dtype=np.int64))
    memory = cuda.alloc_pinned_memory(max(count, 1) * dtype.itemsize)
    return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)


def _prefetch(iterable, depth=2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Exceptions raised while producing reach the consumer; closing the consumer's
    generator (end of epoch, an error in a step) stops the thread.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            items.put((_DONE, exc))

    thread = threading.Thread(target=produce, name="dualnn-batches", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def output_slot(model, x):
    """``{"out": buffer}`` for ``model.forward`` on a GPU, where the model offers a reused
    output buffer (each step's output is consumed within the step), else ``{}``."""
    if model.backend.device == "cpu" or not hasattr(model, "output_buffer"):
        return {}
    buffer = model.output_buffer(x)
    return {} if buffer is None else {"out": buffer}


def reuse_loss_slot(loss_fn, backend, dtype):
    """A copy of ``loss_fn`` writing each loss into one reused 0-d device array, when the
    loss supports it (the training loop reads each loss before the next); else ``loss_fn``."""
    import copy

    from ..losses import LOSSES

    if type(loss_fn) not in set(LOSSES.values()) or "loss_out" not in inspect.signature(
            backend.softmax_cross_entropy).parameters:
        return loss_fn
    loss_fn = copy.copy(loss_fn)
    loss_fn._loss_slot = backend.zeros((), dtype)
    return loss_fn


__all__ = ["RESIDENT_FRACTION", "PinnedFeeder", "ResidentFeeder", "StreamedFeeder", "feed",
           "output_slot",
           "reuse_loss_slot"]
