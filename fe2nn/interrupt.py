"""Stop a long run cleanly on SIGTERM (a batch system's wall-time limit, ``kill``, ``mpirun`` forwarding it).

While :func:`graceful_stop` is active, SIGTERM does not end the process at once: it is recorded,
and the long loops -- the macro solve (``fe2nn solve``, ``fe2nn validate``) and training (``fe2nn
train``) -- poll :func:`requested` after each converged load step or epoch. They then write their
checkpoint, close their output files and raise :class:`Interrupted`, which the command line turns
into one line (what was stopped, where the checkpoint is, how to continue) and exit status 143
(128 + SIGTERM, as a process killed by it). A second SIGTERM before that ends the process at once.

Under MPI every rank polls together (an allreduce per load step), so all ranks stop after the same
step even when only some of them received the signal.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

#: the signals handled while a graceful stop is active
SIGNALS = (signal.SIGTERM,)

_received: Optional[int] = None
_active = False


class Interrupted(Exception):
    """A run stopped on request after a complete step; the message says how to continue."""

    exit_code = 128 + int(signal.SIGTERM)


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    global _received
    if _received is not None:  # a second request: stop now, as without the handler
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
        return
    _received = signum


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Within the block, SIGTERM is recorded for :func:`requested` instead of ending the process.

    The previous handlers come back on exit. Outside the main thread (where Python cannot install
    signal handlers) nothing changes and :func:`requested` stays False.
    """
    global _received, _active
    if threading.current_thread() is not threading.main_thread() or _active:
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    # PETSc, initialised later (at the first DOLFINx/petsc4py import), would install its own handler
    # over this one and abort the run on SIGTERM
    options = os.environ.get("PETSC_OPTIONS")
    os.environ["PETSC_OPTIONS"] = f"{options or ''} -no_signal_handler".strip()
    _received, _active = None, True
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if options is None:
            os.environ.pop("PETSC_OPTIONS", None)
        else:
            os.environ["PETSC_OPTIONS"] = options
        _received, _active = None, False


def active() -> bool:
    """Whether a :func:`graceful_stop` block is active (in this process)."""
    return _active


def requested(comm=None) -> Optional[str]:
    """The name of the stop signal received (on any rank of ``comm``), or None.

    With ``comm`` (an mpi4py communicator) this is collective: call it at the same point on every
    rank. Outside a :func:`graceful_stop` block it returns None without communicating (every rank of
    one command is in the same state).
    """
    if not _active:
        return None
    got = -1 if _received is None else int(_received)
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        got = comm.allreduce(got, op=MPI.MAX)
    return None if got < 0 else signal.Signals(got).name
