"""What a training loop needs from the distributed job: :func:`current` and its methods.

``fit`` (and any hand-written loop) asks :func:`current` once; ``None`` means an ordinary
single-process run. Otherwise the returned :class:`TrainingContext` offers, in the order
a loop uses them::

    ctx = dualnn.distributed.current()
    if ctx is not None:
        ctx.check_consistent(model)                  # same architecture/dtypes everywhere
        ctx.broadcast_model(model, optimizer)        # rank 0's weights, buffers, state, RNG
        order = ctx.shard(rng.permutation(n))        # this rank's samples, each epoch
        ...  forward / backward  ...
        ctx.allreduce_gradients(model.parameters())  # mean gradient, then optimizer.step()
        logs = ctx.reduce_metrics(logs)              # epoch metrics averaged over ranks
        if ctx.is_main: save checkpoint / print

Every method is a collective: all ranks must call it, in the same order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import moments, runtime
from .errors import RankMismatchError
from .sharding import shard_indices


def current():
    """The :class:`TrainingContext` of this process, or None when
    :func:`dualnn.distributed.init` has not been called."""
    state = runtime.state()
    if state is None:
        return None
    context = getattr(state, "context", None)
    if context is None:
        context = state.context = TrainingContext()
    return context


class TrainingContext:
    """Collectives of data-parallel training, on whatever device the arrays live.

    Attributes
    ----------
    rank, size, local_rank : int
    is_main : bool
        True on rank 0: the rank that prints, logs and writes checkpoints.
    """

    def __init__(self):
        self.rank = runtime.rank()
        self.size = runtime.size()
        self.local_rank = runtime.local_rank()
        self.is_main = self.rank == 0
        self._flat = {}
        self.stop_vote = False
        self._stop_slot = None

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _comm(backend):
        return runtime.communicator(backend.device)

    def _host_staged(self, comm, array):
        """True when ``array`` must go through a host copy (a device array over MPI)."""
        return comm.name != "nccl" and not isinstance(array, np.ndarray)

    def _allreduce_(self, backend, array, op):
        comm = self._comm(backend)
        if self._host_staged(comm, array):
            host = np.ascontiguousarray(backend.to_host(array))
            comm.allreduce_(host, op)
            backend.assign(array, backend.asarray(host))
            return array
        return comm.allreduce_(array, op)

    def _broadcast_(self, backend, array, root):
        comm = self._comm(backend)
        contiguous = array.flags.c_contiguous
        if self._host_staged(comm, array) or not contiguous:
            host = np.array(backend.to_host(array), copy=True, order="C")
            runtime.communicator("cpu").broadcast_(host, root)
            backend.assign(array, backend.asarray(host))
            return array
        return comm.broadcast_(array, root)

    # ------------------------------------------------------------------ data
    def shard(self, permutation, drop_remainder=False):
        """This rank's indices of the epoch order ``permutation`` (same on every rank).

        See :func:`dualnn.distributed.sharding.shard_indices`: strided shards, padded by
        wrapping so that every rank takes the same number of steps (``drop_remainder``
        drops the last ``n % size`` samples instead).
        """
        return shard_indices(permutation, self.rank, self.size, drop_remainder)

    def shard_loader(self, loader, drop_remainder=False):
        """``loader`` (a :class:`~dualnn.data.DataLoader`) restricted to this rank's
        shard of every epoch: a :class:`~dualnn.distributed.data.ShardedLoader`."""
        from .data import ShardedLoader

        return ShardedLoader(loader, self.rank, self.size, drop_remainder)

    # ------------------------------------------------------------------ model
    def broadcast_model(self, model, optimizer=None, root=0):
        """Copy ``root``'s parameters, buffers, optimizer state and host RNG state to
        every rank, in place (arrays that are views stay views).

        Parameters
        ----------
        model : Layer
        optimizer : Optimizer or DistributedOptimizer, optional
        root : int
        """
        backend = model.backend
        for _, param in model.named_parameters():
            self._broadcast_(param.backend, param.data, root)
        for _, owner, attr in model._buffer_owners():
            self._broadcast_(backend, getattr(owner, attr), root)
        host = runtime.communicator("cpu")
        if optimizer is not None:
            inner = getattr(optimizer, "optimizer", optimizer)
            state = host.broadcast_object(inner.state_dict() if self.rank == root else None,
                                          root)
            if self.rank != root:
                inner.load_state_dict(state)
        rng = host.broadcast_object(backend.get_rng_state() if self.rank == root else None,
                                    root)
        if self.rank != root:
            backend.set_rng_state(rng)

    @staticmethod
    def model_signature(model):
        """``[(kind, name, detail), ...]``: layer types, parameter and buffer shapes and
        dtypes, in model order (what must agree across ranks)."""
        from ..backend.base import dtype_name

        entries = [("model", "", type(model).__name__)]
        entries += [("layer", name, type(layer).__name__) for name, layer in
                    _named_layers(model)]
        entries += [("parameter", name, f"{p.dtype} {p.shape}")
                    for name, p in model.named_parameters()]
        entries += [("buffer", name, f"{dtype_name(b.dtype)} {tuple(b.shape)}")
                    for name, b in model.named_buffers()]
        return entries

    def check_consistent(self, model):
        """Check every rank holds the same architecture, shapes and dtypes (one small
        all-gather of a checksum; a second one only on a mismatch).

        Raises
        ------
        RankMismatchError
            On every rank, naming the first rank that differs from rank 0 and the first
            differing entry.
        """
        entries = self.model_signature(model)
        digest = hashlib.sha256(repr(entries).encode()).hexdigest()
        host = runtime.communicator("cpu")
        digests = host.allgather(digest)
        if all(d == digests[0] for d in digests):
            return digest
        everyone = host.allgather(entries)
        bad = next(r for r, d in enumerate(digests) if d != digests[0])
        raise RankMismatchError(
            f"rank {bad}'s model differs from rank 0's: "
            f"{first_difference(everyone[0], everyone[bad], bad)}. Every rank must build "
            "the same model with the same dtypes")

    # ------------------------------------------------------------------ gradients
    def allreduce_gradients(self, parameters):
        """Average every parameter's gradient over the ranks, in place.

        Gradients are grouped by device and dtype; each group is packed into ONE flat
        buffer (kept between calls), reduced with one all-reduce, divided by the number
        of ranks and unpacked.

        The first buffer carries one more value, this rank's :attr:`stop_vote` (a
        training loop's "stop after this step" request, e.g. a Ctrl-C): after the
        reduction :meth:`stop_agreed` is true on every rank if any rank voted, so all
        stop after the same step at no extra collective.

        Parameters
        ----------
        parameters : iterable of Parameter
        """
        if self.size == 1:
            return
        vote = True
        groups = {}
        for p in parameters:
            groups.setdefault((p.backend.device, p.dtype), []).append(p)
        for (device, dtype), params in groups.items():
            backend = params[0].backend
            sizes = tuple(p.size for p in params)
            key = (device, dtype, sizes, vote)
            flat = self._flat.get(key)
            if flat is None:
                flat = self._flat[key] = backend.empty((sum(sizes) + vote,), dtype)
            offset = 0
            for p, n in zip(params, sizes):
                flat[offset:offset + n] = p.grad.reshape(-1)
                offset += n
            if vote:
                flat[offset:] = 1.0 if self.stop_vote else 0.0
            self._allreduce_(backend, flat, "mean")
            if vote:
                self._stop_slot = flat[offset:]
                vote = False
            offset = 0
            for p, n in zip(params, sizes):
                grad = p.grad
                grad[...] = flat[offset:offset + n].reshape(grad.shape)
                offset += n

    def stop_agreed(self):
        """True when some rank's :attr:`stop_vote` went with the last gradient
        all-reduce (the same answer on every rank). Reads one value from the device."""
        slot = self._stop_slot
        if slot is None:
            return False
        value = slot[0] if isinstance(slot, np.ndarray) else float(slot.get()[0])
        return bool(value > 0)

    def reset_stop(self):
        """Forget votes and agreements (at the start of a training run)."""
        self.stop_vote = False
        self._stop_slot = None

    # ------------------------------------------------------------------ metrics
    def reduce_metrics(self, metrics, op="mean"):
        """``metrics`` (name -> number) reduced over the ranks; same keys on every rank.

        Raises
        ------
        RankMismatchError
            When ranks pass different metric names.
        """
        names = sorted(metrics)
        host = runtime.communicator("cpu")
        everyone = host.allgather(names)
        for r, theirs in enumerate(everyone):
            if theirs != names:
                raise RankMismatchError(
                    f"rank {r} reduces metrics {theirs}, rank {self.rank} {names}")
        values = np.array([float(metrics[k]) for k in names], dtype=np.float64)
        host.allreduce_(values, op)
        return dict(zip(names, values.tolist()))

    # ------------------------------------------------------------------ batch norm
    def sync_batchnorm_stats(self, count, mean, m2):
        """Batch statistics of all ranks' rows together (Chan's parallel formula).

        Parameters
        ----------
        count : int
            Rows of this rank's batch.
        mean : array (c,)
            Per-feature mean of this rank's rows.
        m2 : array (c,)
            Per-feature sum of squared deviations from that mean.

        Returns
        -------
        (count, mean, m2)
            Over every rank's rows, identical on every rank, on ``mean``'s device;
            ``m2 / count`` is the biased variance batch norm normalizes with.
        """
        from ..device import backend_of

        backend = backend_of(mean, "sync_batchnorm_stats")
        comm = self._comm(backend)
        if self._host_staged(comm, mean):
            n, host_mean, host_m2 = moments.sync_batchnorm_stats(
                comm, count, backend.to_host(mean), backend.to_host(m2), np)
            return n, backend.asarray(host_mean), backend.asarray(host_m2)
        return moments.sync_batchnorm_stats(comm, count, mean, m2, backend.xp)

    def barrier(self):
        """Wait until every rank gets here."""
        runtime.communicator("cpu").barrier()


def _named_layers(layer, prefix=""):
    """``(position, layer)`` pairs named as parameters are (``"1"``, ``"1.0"``)."""
    for index, child in enumerate(layer.children()):
        yield f"{prefix}{index}", child
        yield from _named_layers(child, f"{prefix}{index}.")


def first_difference(reference, other, rank):
    """A sentence naming the first entry where ``other`` (rank ``rank``'s
    :meth:`TrainingContext.model_signature`) differs from rank 0's ``reference``."""
    ref = {(kind, name): detail for kind, name, detail in reference}
    theirs = {(kind, name): detail for kind, name, detail in other}
    for (kind, name), detail in ref.items():
        label = "the model" if kind == "model" else f"{kind} {name!r}"
        if (kind, name) not in theirs:
            return f"{label} ({detail}) exists on rank 0 but not on rank {rank}"
        if theirs[(kind, name)] != detail:
            return f"{label} is {theirs[(kind, name)]} on rank {rank} but {detail} on rank 0"
    for (kind, name), detail in theirs.items():
        if (kind, name) not in ref:
            return f"{kind} {name!r} ({detail}) exists only on rank {rank}"
    return "the layers, parameters or buffers come in a different order"
