"""Data-parallel training over MPI: the ranks a launcher started, one gradient all-reduce a step."""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from anetrain.errors import UserError

# What MPI launchers put in each process's environment: Open MPI's mpirun, then MPICH's and
# Intel MPI's Hydra (PMI). Without one of them a run is a single process and mpi4py never loads.
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
INSTALL = "pip install 'anetrain[mpi]'"
T = TypeVar("T")


class DistError(UserError):
    """The ranks of a run cannot train together (no mpi4py, an error on another rank, ranks that
    diverged)."""


def launched_size() -> int:
    """How many processes the MPI launcher started (1 when there is none)."""
    for var in SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


class World:
    """The ranks of one run. comm is an mpi4py communicator, or None for a single process (every
    method is then a no-op that returns its input)."""

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.stopping_together = False  # every rank is leaving at the same point (no Abort)
        self.local_size = 1  # ranks on this machine (set by connect)

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
        problems = self.comm.allgather(problem)
        failed = [(r, p) for r, p in enumerate(problems) if p is not None]
        if failed:
            self.stopping_together = True
            r, p = failed[0]
            raise DistError(p if r == self.rank else f"rank {r} of {self.size}: {p}")
        return result  # type: ignore[return-value]

    def sum_grads(self, flat: Any, loss_sum: float) -> float:
        """Sum the gradient buffer (fp32 [n_params], in place, no copy) and the loss over the
        ranks; returns the global loss sum."""
        if self.comm is None:
            return loss_sum
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        return float(self.comm.allreduce(loss_sum, op=MPI.SUM))

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
            self.stopping_together = True
            listed = ", ".join(f"rank {r} {c:08x}" for r, c in enumerate(crcs))
            raise DistError(f"{where}: the ranks' parameters diverged by step {step} (checksums "
                            f"{listed}); stopping, nothing saved for this step")  # fmt: skip


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
