"""python -m anetrain probe: what this machine's ANE does, measured through anetrain's own runtime.

Compile time, evaluation latency and achieved TFLOPS of the ten training kernels for one model
shape; surface staging GB/s (the C packer into and out of a kernel's real input surface); a
ladder of 1x1 convs (the reference trainer's peak table, 64-256 deep, 256-512 channels,
spatial 64); ping-pong between two loaded programs; a compile in a background thread while the
main thread keeps evaluating a loaded program (each slowed how much by the other); and, last,
sequential compiles until the framework refuses one or --max-compiles (the ~119-compile ceiling
per process, upstream.md §1.7).

`--runtime ane` runs on the framework anetrain._ane opens: the system's on a Mac, or the Linux
test mock named by $ANETRAIN_ANE_FRAMEWORK ("mock" in the table and the JSON: its figures are the
simulator's). `--runtime sim` runs the numpy simulator. `--json PATH` writes every figure with
the chip, macOS and anetrain versions (probe_report.py: schema, validator); `--compare A B`
prints two results side by side.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings

from anetrain.cli import run_cli
from anetrain.errors import UserError
from anetrain.probe_report import SCHEMA

FULL_LADDER = ((64, 256), (64, 512), (128, 256), (128, 512), (256, 256), (256, 512))
QUICK_LADDER = ((4, 64), (8, 128))  # (depth, channels); spatial SPATIAL
SPATIAL = 64
PINGPONG = (16, 256)  # the two programs' (depth, channels)
QUICK_PINGPONG = (2, 64)
CEILING_PROGRAM = (1, 64)  # each sequential compile: a distinct one-conv program
# macOS 27: the framework refuses processes outside a GUI session (the known limit)
BACKGROUND = ("the framework refused this process: macOS 27 and later do not let a background "
              "(non-GUI) session use the Neural Engine; run the probe from Terminal in a "
              "logged-in desktop session, not over ssh, launchd or cron")  # fmt: skip


class ProbeError(UserError):
    """The probe cannot run here (no framework, refused by it, bad model name)."""


class Refused(ProbeError):
    """The framework refuses this session (macOS 27's background restriction)."""


def explain(message: str) -> str:
    """The framework's error text, with what a known platform limit means."""
    if "background" in message.lower():
        return f"{BACKGROUND} ({message})"
    return message


def failure(e: UserError, what: str = "") -> dict:
    """{"error": text} of a program the probe could not compile or run (a shape this ANE
    refuses, the compile ceiling); a refusal of the session itself ends the probe (Refused)."""
    msg = str(e)
    if "background" in msg.lower():
        raise Refused(explain(msg)) from None
    return {"error": f"{what}: {msg}" if what else msg}


def chip() -> str:
    """The CPU/SoC brand ("Apple M4 Pro" on a Mac), else the machine type."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5).stdout.strip()  # fmt: skip
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def second_runtime(rt):
    """A new runtime object like `rt` (the same framework and rules), for another thread."""
    from anetrain.backends.runtime import AneRuntime, SimRuntime

    if isinstance(rt, AneRuntime):
        return AneRuntime(rt.framework_path, strict=rt.strict)
    return SimRuntime()


def open_runtime(kind: str):
    """(runtime, "ane" | "mock" | "sim", framework path or None)."""
    from anetrain.backends.runtime import SimRuntime

    if kind == "sim":
        return SimRuntime(), "sim", None
    from anetrain.backends import ane
    from anetrain.backends.platform import ane_unavailable
    from anetrain.backends.runtime import AneRuntime

    why = ane_unavailable()
    if why:
        raise ProbeError(f"--runtime ane: {explain(why)} (--runtime sim probes the simulator)")
    try:
        rt = AneRuntime()
    except ane.AneError as e:
        raise ProbeError(f"--runtime ane: {explain(str(e))}") from None
    label = "ane" if rt.framework_path == ane.SYSTEM_FRAMEWORK else "mock"
    return rt, label, rt.framework_path


# ---- measurements ---------------------------------------------------------------------------


def eval_ms(exe, inp, reps: int) -> float:
    """Median milliseconds of one evaluation (after one warm-up)."""
    exe.eval(inp)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        exe.eval(inp)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def compiled(rt, spec):
    """(executable, compile ms)."""
    t = time.perf_counter()
    exe = rt.compile(spec)
    return exe, 1e3 * (time.perf_counter() - t)


def _random_input(exe, seed: int = 0):
    """A new input surface holding small random fp16 values ([C, W])."""
    import numpy as np

    from anetrain import native

    inp = exe.new_input()
    x = np.random.default_rng(seed).uniform(-1, 1, (inp.C, inp.W)).astype(np.float32)  # [C, W]
    with inp.lock() as v:
        native.pack(v, 0, 0, x)
    return inp


def staging(inp, reps: int) -> dict:
    """GB/s of fp16 surface bytes packed from fp32 and unpacked to fp32 (native, one thread),
    on a real input surface (locked as training locks it)."""
    import numpy as np

    from anetrain import native

    x = np.random.default_rng(1).standard_normal((inp.C, inp.W), dtype=np.float32)  # [C, W]
    y = np.empty_like(x)  # [C, W]
    best_p = best_u = float("inf")
    for _ in range(max(reps, 3)):
        t = time.perf_counter()
        with inp.lock() as v:
            native.pack(v, 0, 0, x)
        t1 = time.perf_counter()
        with inp.lock(read_only=True) as v:
            native.unpack(v, 0, 0, inp.C, inp.W, out=y)
        t2 = time.perf_counter()
        best_p, best_u = min(best_p, t1 - t), min(best_u, t2 - t1)
    n = inp.C * inp.W * 2
    return {"bytes": n, "pack_gbs": n / best_p / 1e9, "unpack_gbs": n / best_u / 1e9}


def probe_kernels(rt, cfg, reps: int) -> tuple[dict, dict]:
    """({kernel: compile_ms, eval_ms, gflop, tflops} or {"error"}, staging figures on the
    largest input surface)."""
    from anetrain.bench.overlap import kernel_flops
    from anetrain.mil.kernels import build_specs

    flops = kernel_flops(cfg)
    specs = build_specs(cfg, strict=rt.strict)
    out: dict[str, dict] = {}
    big = max(specs, key=lambda n: specs[n].inp.nbytes)
    stage: dict = {"error": f"kernel {big} did not compile"}
    for name, spec in specs.items():
        try:
            exe, c_ms = compiled(rt, spec)
        except UserError as e:
            out[name] = failure(e)
            continue
        try:
            inp = _random_input(exe)
            ms = eval_ms(exe, inp, reps)
            out[name] = {"compile_ms": c_ms, "eval_ms": ms, "gflop": flops[name] / 1e9,
                         "tflops": flops[name] / ms / 1e9}  # fmt: skip
            if name == big:
                stage = {"kernel": name, **staging(inp, reps)}
        except UserError as e:
            out[name] = failure(e)
        finally:
            exe.free()
    return out, stage


def probe_ladder(rt, shapes, reps: int) -> list[dict]:
    from anetrain.mil.probe_programs import conv_ladder, ladder_flops

    rows = []
    for depth, ch in shapes:
        row: dict = {"depth": depth, "channels": ch, "spatial": SPATIAL}
        try:
            exe, c_ms = compiled(rt, conv_ladder(depth, ch, SPATIAL))
        except UserError as e:
            rows.append(failure(e, f"{depth}x {ch}ch"))
            continue
        try:
            ms = eval_ms(exe, _random_input(exe), reps)
            fl = ladder_flops(depth, ch, SPATIAL)
            row.update(gflop=fl / 1e9, compile_ms=c_ms, eval_ms=ms, tflops=fl / ms / 1e9)
            rows.append(row)
        except UserError as e:
            rows.append(failure(e, f"{depth}x {ch}ch"))
        finally:
            exe.free()
    return rows


def probe_pingpong(rt, shape: tuple[int, int], reps: int) -> dict:
    """Evaluation ms of program A repeated, B repeated, and A, B alternating (both loaded);
    switch_ms: what alternating costs per evaluation over repeating."""
    from anetrain.mil.probe_programs import conv_ladder

    depth, ch = shape
    exes = []
    try:
        for tag in ("a", "b"):
            exes.append(compiled(rt, conv_ladder(depth, ch, SPATIAL, name=f"pingpong_{tag}"))[0])
        (a, b), inps = exes, [_random_input(e) for e in exes]
        a_ms, b_ms = eval_ms(a, inps[0], reps), eval_ms(b, inps[1], reps)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a.eval(inps[0])
            b.eval(inps[1])
            times.append((time.perf_counter() - t) / 2)
        alt = 1e3 * statistics.median(times)
        return {"a_ms": a_ms, "b_ms": b_ms, "alternating_ms": alt,
                "switch_ms": alt - (a_ms + b_ms) / 2}  # fmt: skip
    except UserError as e:
        return failure(e)
    finally:
        for e in exes:
            e.free()


def _start_compile(rt, spec) -> tuple[threading.Thread, dict]:
    """A started thread compiling `spec` on `rt` (then freeing it), and the dict it fills: "ms",
    or "exc" (the exception, for the starting thread to report after join())."""
    result: dict = {}
    started = threading.Event()

    def work() -> None:
        started.set()
        try:
            exe, result["ms"] = compiled(rt, spec)
            exe.free()
        except BaseException as e:  # noqa: BLE001 - reported by the evaluating thread
            result["exc"] = e

    thread = threading.Thread(target=work, name="anetrain-probe-compile", daemon=True)
    thread.start()
    started.wait()
    return thread, result


def probe_background_compile(rt, rt_bg, eval_shape: tuple[int, int],
                             compile_shape: tuple[int, int], reps: int) -> dict:
    """Evaluation ms of a loaded program (a conv ladder of eval_shape) alone, and while another
    thread compiles a new program (compile_shape) on rt_bg, evaluating it back to back for the
    whole compile; that compile's ms against the same compile alone (on this thread, nothing
    evaluating). A failed evaluation or background compile is recorded in "error".

    rt_bg is a runtime object of its own: backends/ane.py's objects must not be used from two
    threads at once (separate objects may), so the compiling thread never touches `rt` and this
    one never touches rt_bg while it runs."""
    from anetrain.mil.probe_programs import conv_ladder

    depth, ch = compile_shape
    bg_spec = conv_ladder(depth, ch, SPATIAL, name="overlap_bg")
    exe = None
    try:
        exe = compiled(rt, conv_ladder(*eval_shape, SPATIAL, name="overlap_eval"))[0]
        inp = _random_input(exe)
        alone = eval_ms(exe, inp, reps)
        fg_exe, fg_ms = compiled(rt, conv_ladder(depth, ch, SPATIAL, name="overlap_fg"))
        fg_exe.free()
        thread, result = _start_compile(rt_bg, bg_spec)
        times: list[float] = []
        eval_err = None
        try:
            while True:  # every evaluation here starts while the compile runs
                t = time.perf_counter()
                exe.eval(inp)
                times.append(time.perf_counter() - t)
                if not thread.is_alive():
                    break
        except UserError as e:
            eval_err = failure(e, "evaluation")["error"]
        finally:
            thread.join()
    except UserError as e:
        return failure(e)
    finally:
        if exe is not None:
            exe.free()
    exc = result.get("exc")
    if exc is not None and not isinstance(exc, UserError):
        raise exc
    compile_err = failure(exc, "compile")["error"] if exc is not None else None
    errors = [m for m in (eval_err, compile_err) if m is not None]
    during = 1e3 * statistics.median(times) if times else None
    bg_ms = result.get("ms")
    return {"eval_program": exe.spec.name, "compile_program": bg_spec.name, "eval_ms": alone,
            "eval_during_ms": during, "evals_during": len(times),
            "slowdown": during / alone if during is not None and alone > 0 else None,
            "compile_fg_ms": fg_ms, "compile_bg_ms": bg_ms,
            "compile_slowdown": bg_ms / fg_ms if bg_ms is not None and fg_ms > 0 else None,
            "evaluated": eval_err is None, "compiled": compile_err is None,
            "error": "; ".join(errors) or None}  # fmt: skip


def probe_ceiling(rt, max_compiles: int, elsewhere: int = 0) -> dict:
    """Compile (and free) distinct small programs until the framework refuses one or
    max_compiles succeed. Run it last: a refusal is the process's compile budget spent.
    elsewhere: the compiles this process made through other runtime objects."""
    from anetrain.mil.probe_programs import conv_ladder

    depth, ch = CEILING_PROGRAM
    n, total, err = 0, 0.0, None
    while n < max_compiles:
        spec = conv_ladder(depth, ch, SPATIAL, name=f"ceiling{n}")
        try:
            exe, ms = compiled(rt, spec)
        except UserError as e:
            err = failure(e)["error"]
            break
        exe.free()
        n, total = n + 1, total + ms
    if err is not None and n == 0:
        return {"error": err}
    return {"compiles": n, "max": max_compiles, "refused": err is not None, "error": err,
            "compile_ms": total / max(n, 1),
            "process_compiles": rt.compiles + elsewhere}  # fmt: skip


# ---- the run -------------------------------------------------------------------------------


def model_config(name: str):
    """A preset (config.PRESETS) or a Hugging Face shape (bench/hf.py SHAPES)."""
    from anetrain.bench.hf import SHAPES
    from anetrain.config import PRESETS, preset

    if name in PRESETS:
        return preset(name)
    if name in SHAPES:
        return SHAPES[name]
    raise ProbeError(f"--model: unknown model {name!r} (choose from "
                     f"{', '.join([*PRESETS, *SHAPES])})")  # fmt: skip


def collect(args: argparse.Namespace, say=print) -> dict:
    """Every probe, in an order that leaves the compile ceiling last."""
    import anetrain
    from anetrain.backends.platform import macos_version

    cfg = model_config(args.model)
    rt, kind, framework = open_runtime(args.runtime)
    reps = args.reps or (3 if args.quick else 20)
    notes = []
    if kind != "ane":
        notes.append("figures of the " + ("mock framework over the simulator" if kind == "mock"
                                          else "numpy simulator") + ", not of an ANE")  # fmt: skip
    try:
        say(f"probing {kind}: the ten kernels of {args.model} ...")
        kernels, stage = probe_kernels(rt, cfg, reps)
        say("conv ladder ...")
        ladder = probe_ladder(rt, QUICK_LADDER if args.quick else FULL_LADDER, reps)
        say("ping-pong ...")
        pingpong = probe_pingpong(rt, QUICK_PINGPONG if args.quick else PINGPONG, reps)
        say("a compile in a background thread while evaluating ...")
        rt_bg = second_runtime(rt)  # the compiling thread's own (ane.py objects: one thread each)
        try:
            background = probe_background_compile(
                rt, rt_bg, (QUICK_LADDER if args.quick else FULL_LADDER)[0],
                QUICK_PINGPONG if args.quick else PINGPONG, reps)  # fmt: skip
        finally:
            rt_bg.close()
        say(f"sequential compiles (up to {args.max_compiles}) ...")
        ceiling = probe_ceiling(rt, args.max_compiles, elsewhere=rt_bg.compiles)
    finally:
        rt.close()
    if ceiling.get("refused"):
        notes.append(f"the framework refused compile {ceiling['process_compiles'] + 1} of this "
                     "process: the per-process compile ceiling (training re-executes itself "
                     "before it, upstream.md §1.7)")  # fmt: skip
    mac = macos_version()
    return {"schema": SCHEMA, "tool": "anetrain probe", "anetrain": anetrain.__version__,
            "runtime": kind, "framework": framework, "chip": chip(),
            "macos": ".".join(map(str, mac)) if mac else None, "machine": platform.machine(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": args.model, "config": cfg.to_dict()}, "reps": reps,
            "kernels": kernels, "staging": stage, "ladder": ladder, "pingpong": pingpong,
            "background_compile": background, "ceiling": ceiling, "notes": notes}  # fmt: skip


def write_json(path: str, doc: dict) -> None:
    import json
    from pathlib import Path

    from anetrain.formats.files import atomic_write

    data = (json.dumps(doc, indent=1) + "\n").encode()
    atomic_write(Path(path), lambda f: f.write(data), "the probe result")


def build_parser() -> argparse.ArgumentParser:
    from anetrain.bench._args import positive_int

    p = argparse.ArgumentParser(prog="python -m anetrain probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", choices=("ane", "sim"), default="ane",
                   help="ane: the framework (the system's, or $ANETRAIN_ANE_FRAMEWORK); sim: the "
                        "numpy simulator (ane)")
    p.add_argument("--model", default="stories110m",
                   help="the model shape of the ten kernels: a preset or a bench hf shape "
                        "(stories110m)")
    p.add_argument("--reps", type=positive_int, default=None,
                   help="timed evaluations per program (20; 3 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a small conv ladder, ping-pong and background compile (for the simulator "
                        "and tests)")
    p.add_argument("--max-compiles", type=positive_int, default=150,
                   help="stop the sequential compiles here if the framework has not refused "
                        "one (150)")
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print two probe results side by side (nothing is measured)")
    return p


def probe(argv: list[str] | None) -> int:
    from anetrain import probe_report

    args = build_parser().parse_args(argv)
    if args.compare:
        a, b = (probe_report.load(p) for p in args.compare)
        print(probe_report.compare(a, b, tuple(args.compare)))
        return 0
    from anetrain.mil.errors import MilWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MilWarning)  # the small probe programs are deliberate
        doc = collect(args, say=lambda m: print(m, file=sys.stderr))
    probs = probe_report.validate(doc)
    assert not probs, probs  # the writer and the validator are one schema
    print(probe_report.table(doc))
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain probe", probe, argv)


if __name__ == "__main__":
    sys.exit(main())
