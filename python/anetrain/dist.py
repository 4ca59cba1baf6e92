"""Data-parallel training over MPI: the ranks a launcher started, one gradient all-reduce a step."""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from anetrain.cli import Stopped, signals_deferred
from anetrain.config import default_threads
from anetrain.errors import UserError

# What MPI launchers put in each process's environment: Open MPI's mpirun, then MPICH's and
# Intel MPI's Hydra (PMI). Without one of them a run is a single process and mpi4py never loads.
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
INSTALL = "pip install 'anetrain[mpi]'"
T = TypeVar("T")


class DistError(UserError):
    """The ranks of a run cannot train together (no mpi4py, an error on another rank, ranks that
    diverged)."""


def launched_size(names: tuple[str, ...] = SIZE_VARS) -> int:
    """How many processes the MPI launcher started (1 when there is none)."""
    for var in names:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


# ... and how many of them run on this machine (Open MPI, MPICH's Hydra).
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def cores_per_rank() -> int:
    """This machine's cores shared among the ranks the launcher put on it (numpy-free: train
    sizes the BLAS threads with it before numpy loads)."""
    return max(1, default_threads() // launched_size(LOCAL_SIZE_VARS))


class World:
    """The ranks of one run. comm is an mpi4py communicator, or None for a single process (every
    method is then a no-op that returns its input)."""

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.stopping_together = False  # every rank is leaving at the same point (no Abort)
        self.local_size = 1  # ranks on this machine (set by connect)
        self.pending: str | None = None  # a user error waiting for the next agreement

    def check_backend(self, backend: str) -> None:
        """One Mac has one ANE: more ane ranks on one machine than that is refused."""
        if backend == "ane" and self.local_size > 1:
            raise DistError(f"--backend ane: {self.local_size} ranks on one machine share its one "
                            "ANE; start one rank per Mac (mpirun -N 1 or a hostfile with slots=1), "
                            "or use --backend cpu")  # fmt: skip

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes the checkpoint and the metrics."""
        return self.rank == 0

    def quiet_others(self, quiet: bool) -> bool:
        """Rank 0 alone prints what a run reports: the others' stdout goes to /dev/null (their
        errors still reach stderr). Returns the quiet flag for this rank."""
        if self.writer:
            return quiet
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
        return True

    def together(self, error: BaseException) -> BaseException:
        """Mark error (a UserError or Stopped) as raised on every rank at the same point: no
        MPI_Abort, and rank 0 alone prints its line (the others' stderr goes to /dev/null)."""
        if self.comm is not None:
            self.stopping_together = True
            if not self.writer:
                sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
        return error

    def _first_problem(self, problems: list[str | None]) -> None:
        """Raise the lowest failing rank's problem on every rank (naming that rank)."""
        failed = [(r, p) for r, p in enumerate(problems) if p is not None]
        if failed:
            r, p = failed[0]
            raise self.together(DistError(p if r == self.rank else f"rank {r} of {self.size}: {p}"))

    def agree(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on every rank; if it raised a UserError on any, every rank raises it (the
        lowest failing rank's message, naming the rank), so all stop with the same line."""
        try:
            result, problem = fn(*args), None
        except UserError as e:
            result, problem = None, str(e)
        if self.comm is None:
            if problem is not None:
                raise UserError(problem)
            return result  # type: ignore[return-value]
        self._first_problem(self.comm.allgather(problem))
        return result  # type: ignore[return-value]

    def fail(self, error: UserError) -> None:
        """A user error on this rank between two collectives: a single process raises it; with
        several ranks it waits for the next agreement (sum_grads or meet), where every rank
        stops with it, since the peers are on their way there."""
        if self.comm is None:
            raise error
        self.pending = self.pending or str(error)

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn; a UserError it raises goes to fail (rank 0's writes between collectives)."""
        try:
            fn(*args)
        except UserError as e:
            self.fail(e)

    @contextmanager
    def deferring_signals(self) -> Iterator[list[int]]:
        """Several ranks: the stop signals are recorded in the yielded list instead of raised,
        and the ranks agree on them where they meet; a single process gets an empty list (its
        signals raise Stopped as ever)."""
        if self.comm is None:
            yield []
        else:
            with signals_deferred() as caught:
                yield caught

    def meet(self, caught: list[int], totals: tuple[float, ...] = ()) -> tuple[float, ...]:
        """Where the ranks meet once a step: the global sums of `totals` (the step's loss sum
        and weight), or every rank stops together if any rank has a pending user error (the
        lowest rank's) or caught a stop signal (the highest signal number)."""
        if self.comm is None:
            return totals
        votes = self.comm.allgather((totals, caught[0] if caught else 0, self.pending))
        self._first_problem([problem for _, _, problem in votes])
        signum = max(s for _, s, _ in votes)
        if signum:
            raise self.together(Stopped(signum))
        return tuple(sum(t[i] for t, _, _ in votes) for i in range(len(totals)))

    def sum_grads(self, flat: Any, totals: tuple[float, ...], caught: list[int]
                  ) -> tuple[float, ...]:  # fmt: skip
        """Sum the gradient buffer (fp32, in place, no copy) over the ranks, then meet (the
        totals, stops, errors); returns the global totals."""
        if self.comm is None:
            return totals
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        return self.meet(caught, totals)

    def barrier(self) -> None:
        """Wait for every rank (before a stop's exit: mpirun kills the others when one exits
        non-zero, so none may leave before rank 0 has saved)."""
        if self.comm is not None:
            self.comm.Barrier()

    def from_writer(self, value: T) -> T:
        """Rank 0's value on every rank (a decision that depends on its clock)."""
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def check_same(self, flat: Any, step: int, where: str) -> None:
        """Stop with a clear error when the ranks' parameters (fp32 [n_params]) differ: a CRC32
        of every byte, compared across the ranks."""
        if self.comm is None:
            return
        crcs = self.comm.allgather(zlib.crc32(memoryview(flat).cast("B")))
        if len(set(crcs)) > 1:
            listed = ", ".join(f"rank {r} {c:08x}" for r, c in enumerate(crcs))
            raise self.together(DistError(
                f"{where}: the ranks' parameters diverged by step {step} (checksums {listed}); "
                "stopping, nothing saved for this step"))  # fmt: skip


_world: World | None = None


def connect() -> World:
    """The ranks of this run: MPI's world when a launcher started more than one process, else a
    single process (mpi4py is not imported)."""
    global _world
    if _world is None:
        size = launched_size()
        if size == 1:
            _world = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise DistError(f"an MPI launcher started {size} processes but mpi4py is not "
                                f"installed: {INSTALL}") from None  # fmt: skip
            _world = World(MPI.COMM_WORLD)
            _world.local_size = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    return _world


def finish(code: int) -> int:
    """A rank's exit: one that fails alone (an error, a signal) aborts the job, since its peers
    may wait in a collective that it will never join and MPI_Finalize would wait for them."""
    if _world is not None and _world.comm is not None and code != 0 and \
            not _world.stopping_together:  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        _world.comm.Abort(code)
    return code
