"""LatencyRuntime: a timing model of the ANE for `bench overlap`; evaluations only sleep."""

from __future__ import annotations

import time

from anetrain.backends.runtime import ArraySurface, SimExecutable, SimRuntime
from anetrain.mil.kernels import KernelSpec


class LatencyExecutable(SimExecutable):
    """Evaluation = time.sleep(seconds); the output surface keeps whatever it holds (zeros)."""

    def __init__(self, runtime: LatencyRuntime, spec: KernelSpec, seconds: float) -> None:
        self.rt, self.spec, self.seconds = runtime, spec, seconds
        self.out = ArraySurface(spec.out.C, spec.out.W)  # [C_out, S], stays zero
        self.inputs = []

    def eval(self, inp: ArraySurface) -> None:
        c0, t0 = time.thread_time(), time.perf_counter()
        time.sleep(self.seconds)
        c1, t1 = time.thread_time(), time.perf_counter()
        self.rt.log.append((self.spec.name, c0, c1, t0, t1))
        self.rt.evals += 1
        self.rt.eval_seconds += t1 - t0


class LatencyRuntime(SimRuntime):
    """Programs that take a given time per evaluation and compute nothing (overlap benchmark).

    `seconds`: kernel name -> evaluation time. Every evaluation appends (kernel name, calling
    thread's CPU time at its start and end, perf_counter at its start and end) to `log`, so a
    benchmark can measure the host work between dependent evaluations.
    """

    name = "latency"

    def __init__(self, seconds: dict[str, float]) -> None:
        super().__init__()
        self.seconds = dict(seconds)
        self.log: list[tuple[str, float, float, float, float]] = []

    def compile(self, spec: KernelSpec) -> LatencyExecutable:
        self.compiles += 1
        return LatencyExecutable(self, spec, self.seconds[spec.name])
