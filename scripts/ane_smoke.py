#!/usr/bin/env python3
"""ANE smoke test for a Mac owner: compile, check kernels against the cpu ones, train 20 steps.

    python scripts/ane_smoke.py                   # tiny + stories110m kernels, tiny training
    python scripts/ane_smoke.py --json smoke.json --train-model stories110m

1. opens AppleNeuralEngine.framework (or $ANETRAIN_ANE_FRAMEWORK, e.g. the Linux mock);
2. for each model: compiles the ten kernels once (timed), evaluates each once on random
   non-symmetric data and compares with CpuKernels (relative L2 and max errors), and checks that
   an fp16 overflow comes out as inf (what dynamic loss scaling detects), not saturated;
3. trains `--steps` steps on --backend ane and on --backend cpu from the same seed and compares
   the first and final losses (1% / 5%);
4. prints a pass/fail table and a JSON report (chip, macOS version, times, errors).
On the real ANE `tiny` runs widened to pass every size rule of our checker (ANE_TINY: 64-aligned
widths, head_dim >= 32, >= 48 KB per I/O tensor; GQA 4:2, so the GQA programs are compiled too);
other unaligned models (stories15m: dim 288) are reported as FAIL with the reason. Every kernel
is compiled even when one fails, and a framework that does not open, a crash or a hang while
compiling, evaluating or training, still end in the table and the JSON report: each model's
kernel checks and each training run happen in a child process, and --json is rewritten after
every section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from anetrain.backends.ane import FRAMEWORK_ENV, AneError
from anetrain.backends.cpu import CpuKernels
from anetrain.backends.mil import MilKernels
from anetrain.backends.platform import ROSETTA, old_macos, under_rosetta
from anetrain.backends.runtime import AneRuntime
from anetrain.config import ConfigError, preset
from anetrain.mil.errors import MilError
from anetrain.mil.kernels import build_specs
from anetrain.model import tile_kv
from anetrain.params import init_params

# tiny (dim 64, hidden 176, seq 64) breaks the ANE's size rules; this passes all of them
ANE_TINY = {"dim": 128, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 384, "seq_len": 256}
KERNEL_TOL = 2e-2  # relative L2 per output; fp16 gives ~1e-3, a layout/orientation bug ~1
CALLS = {  # kernel -> (MilKernels/CpuKernels method, activation shapes as cfg attribute names)
    "sdpaFwd": ("sdpa_fwd", ("dim",)), "woFwd": ("wo_fwd", ("q_dim",)),
    "ffnFused": ("ffn_fused", ("dim",)), "ffnBwdW2t": ("ffn_bwd_w2t", ("dim",)),
    "ffnBwdW13t": ("ffn_bwd_w13t", ("hidden_dim", "hidden_dim")),
    "wotBwd": ("wot_bwd", ("dim",)), "sdpaBwd": ("sdpa_bwd", ("q_dim",) * 4),
    "qBwd": ("q_bwd", ("q_dim",)), "kvBwd": ("kv_bwd", ("kv_dim", "kv_dim")),
}  # fmt: skip


def machine() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "macos": platform.mac_ver()[0] or None, "old_macos": old_macos(),
            "python": platform.python_version(), "rosetta": under_rosetta()}  # fmt: skip
    try:
        info["chip"] = subprocess.run(["/usr/sbin/sysctl", "-n", "machdep.cpu.brand_string"],
                                      capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["chip"] = None
    return info


def model_cfg(name: str, strict: bool):
    cfg = preset(name, vocab_size=512 if name == "tiny" else 32000)
    if strict and name == "tiny":
        cfg = cfg.replace(**ANE_TINY)
    return cfg


def probe_params(cfg, rng: np.random.Generator):
    """Non-symmetric, fan-in scaled weights (rows sum to ~N(0, 1)), norms != 1."""
    params = init_params(cfg, rng)
    for t in params.tensors.values():
        t[...] = rng.standard_normal(t.shape, dtype=np.float32) / np.sqrt(t.shape[-1]) \
            if t.ndim == 2 else rng.uniform(0.5, 1.5, t.shape)  # fmt: skip
    return params


def check_kernels(name: str, rt: AneRuntime, seed: int) -> dict:
    """Compile the ten kernels (timed, with our checker's warnings), evaluate each once against
    CpuKernels. If one fails to compile, the rest are still compiled one by one and reported."""
    cfg = model_cfg(name, rt.strict)
    rng = np.random.default_rng(seed)
    params = probe_params(cfg, rng)
    out: dict = {"config": cfg.to_dict(), "compile": {}, "kernels": {}}
    compile_fn = rt.compile

    def timed(spec):
        t = time.perf_counter()
        entry = out["compile"][spec.name] = {"ok": False}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                k = compile_fn(spec)
            except (AneError, MilError) as e:
                entry["error"] = f"{type(e).__name__}: {e}"
                raise
            finally:
                entry["warnings"] = [str(w.message) for w in caught]
        entry.update(ok=True, compile_s=time.perf_counter() - t)
        return k

    rt.compile = timed  # type: ignore[method-assign]
    try:
        mil = MilKernels(cfg, params, rt)  # ConfigError when the sizes are not ANE-aligned
    except (AneError, MilError):
        if all(v["ok"] for v in out["compile"].values()):
            raise  # not a compile (a surface, a request): model_rows reports it
        for kname, spec in build_specs(cfg, strict=rt.strict).items():
            if kname not in out["compile"]:  # the ones MilKernels never reached
                try:
                    timed(spec)  # freed by rt.close()
                except (AneError, MilError):
                    pass
        return out
    finally:
        rt.compile = compile_fn  # type: ignore[method-assign]
    try:
        _eval_kernels(out["kernels"], cfg, params, mil, rt, rng)
        out["overflow"] = overflow_probe(cfg, mil)
    finally:
        mil.close()
    return out


def overflow_probe(cfg, mil: MilKernels) -> dict:
    """Dynamic loss scaling sees an fp16 overflow only as inf/NaN in the gradients, so the ANE
    must turn an overflow into inf (IEEE) or NaN, not saturate at 65504. woFwd on inputs of 60000:
    out[c] = 60000 * sum_j Wo[c, j] exceeds 65504 wherever |sum_j Wo[c, j]| > 1.1."""
    x = np.full((cfg.q_dim, cfg.seq_len), 60000.0, np.float32)  # [Q, S]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the simulator's overflow warning
            y = mil.wo_fwd(0, x)  # [D, S]
    except AneError as e:
        return {"ok": False, "error": f"AneError: {e}"}
    finite = np.abs(y[np.isfinite(y)])
    top = float(finite.max()) if finite.size else None
    return {"ok": bool(not np.isfinite(y).all()), "inf": int(np.isinf(y).sum()),
            "nan": int(np.isnan(y).sum()), "max_finite": top}


def _eval_kernels(results: dict, cfg, params, mil: MilKernels, rt, rng) -> None:
    """Each kernel once on random inputs vs CpuKernels: results[kernel] = errors and times."""
    cpu = CpuKernels(cfg, params)
    S = cfg.seq_len
    for kname, (method, dims) in CALLS.items():
        xs = [rng.standard_normal((getattr(cfg, d), S), dtype=np.float32) for d in dims]
        if kname == "sdpaBwd":  # tiled k and v: GQA-consistent
            xs[1] = tile_kv(xs[1][: cfg.kv_dim], cfg)
            xs[2] = tile_kv(xs[2][: cfg.kv_dim], cfg)
        e0, t = rt.eval_seconds, time.perf_counter()
        try:
            got = getattr(mil, method)(0, *xs)
        except AneError as e:  # the NSError of this evaluation; the other kernels still run
            results[kname] = {"ok": False, "error": f"AneError: {e}"}
            continue
        wall, ev = time.perf_counter() - t, rt.eval_seconds - e0
        ref = getattr(cpu, method)(0, *xs)
        got, ref = (got, ref) if isinstance(ref, tuple) else ((got,), (ref,))
        rel = max(float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30))
                  for g, r in zip(got, ref))  # fmt: skip
        mx = max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30))
                 for g, r in zip(got, ref))  # fmt: skip
        results[kname] = {"rel_l2": rel, "max_rel": mx, "eval_s": ev, "call_s": wall,
                          "ok": bool(rel <= KERNEL_TOL and np.isfinite(rel))}  # fmt: skip


def run_child(cmd: list[str], timeout: float, env: dict | None = None):
    """Run a child Python (`-X faulthandler`): (None, stdout) when it exits 0, else
    ({"ok": False, "error", "output"}, None) naming a crash ("killed by SIGSEGV", faulthandler's
    stack in the output), a hang (no result after `timeout` s) or its last line of output."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-2000:]
        return {"ok": False, "error": f"no result after {timeout:g} s (hung?)",
                "output": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}, None
    if r.returncode == 0:
        return None, r.stdout
    text = (r.stderr or r.stdout).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if r.returncode < 0:  # killed by a signal: faulthandler's stack is in the output
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = str(-r.returncode)
        error = f"killed by {name}"
    else:
        error = lines[-1] if lines else f"exit status {r.returncode}"
    return {"ok": False, "error": error, "output": text[-4000:]}, None


def kernels_in_child(name: str, seed: int, timeout: float) -> dict:
    """check_kernels for one model in a child process, so that a crash or a hang inside the
    framework costs that model's rows, not the report: {"rows", "model", "compiles"}, or
    run_child's error dict."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "kernels.json"
        cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()),
               "--child-kernels", name, "--seed", str(seed), "--child-out", str(out)]  # fmt: skip
        err, _ = run_child(cmd, timeout)
        return err or json.loads(out.read_text())


def kernels_here(name: str, rt: AneRuntime, seed: int) -> dict:
    """What the child does (and --in-process): one model's rows, report entry and compiles."""
    models: dict = {}
    c0 = rt.compiles
    rows = model_rows(name, rt, seed, models)
    return {"rows": rows, "model": models[name], "compiles": rt.compiles - c0}


def train(backend: str, model: str, steps: int, seed: int, overrides: dict | None,
          timeout: float) -> dict:  # fmt: skip
    """Run the train CLI in a child (a crash in the framework must not take the report with
    it); {"ok", "losses", "wall_s", "skipped", "report"} or {"ok": False, "error", "output"}."""
    with tempfile.TemporaryDirectory() as d:
        args = ["--backend", backend, "--model", model, "--steps", str(steps), "--seed",
                str(seed), "--out", d]  # fmt: skip
        cmd = [sys.executable, "-X", "faulthandler", "-m", "anetrain.train", *args]
        env = dict(os.environ)
        if overrides:  # the aligned tiny for the real ANE: the same model on both backends
            env["ANETRAIN_SMOKE_CFG"] = json.dumps(overrides)
            cmd = [sys.executable, "-X", "faulthandler", "-c", _TRAIN_ALIGNED, *args]
        t = time.perf_counter()
        err, stdout = run_child(cmd, timeout, env)
        if err:
            return err
        wall = time.perf_counter() - t
        rows = [json.loads(ln) for ln in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    out = stdout.strip().splitlines()
    return {"ok": True, "losses": [r["loss"] for r in rows], "wall_s": wall,
            "skipped": rows[-1].get("skipped", 0), "report": out[-9:],
            "model": next((ln for ln in out if ln.startswith("model:")), None)}


# Runs the train CLI with the tiny preset's sizes replaced (real ANE: ANE_TINY).
_TRAIN_ALIGNED = """
import json, os, sys
from anetrain import config
sizes = json.loads(os.environ["ANETRAIN_SMOKE_CFG"])
config.PRESETS["tiny"] = config.PRESETS["tiny"].replace(**sizes)
from anetrain.train import main
sys.exit(main(sys.argv[1:]))
"""


def save(path: str | None, report: dict) -> str:
    """The report as JSON text, also written to `path` (atomically) when given; called after
    every section, so a report survives even if this process itself dies later."""
    text = json.dumps(report, indent=1, default=str)
    if path:
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    return text


def open_framework(report: dict, rows: list) -> AneRuntime | None:
    """The ANE runtime (report["framework"] says which), or None and a failed row."""
    t = time.perf_counter()
    try:
        rt = AneRuntime()
    except AneError as e:  # not built, dlopen failed, a class or selector missing
        report["framework"] = {"error": str(e), "mock": bool(os.environ.get(FRAMEWORK_ENV))}
        rows.append(("open the ANE framework", False, str(e)))
        return None
    # "mock": a replacement framework (e.g. the Linux mock), not held to the ANE's rules
    report["framework"] = {"path": rt.framework_path, "mock": not rt.strict,
                           "open_s": time.perf_counter() - t}  # fmt: skip
    report["compiles"] = 0
    return rt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,  # what it does, step by step
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--models", default="tiny,stories110m",
                   help="comma-separated presets whose ten kernels are compiled and checked "
                        "against the cpu kernels (tiny,stories110m)")  # fmt: skip
    p.add_argument("--train-model", default="tiny",
                   help="preset trained on ane and on cpu to compare the losses (tiny)")
    p.add_argument("--steps", type=int, default=20,
                   help="optimizer steps of each of the two training runs (20)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the kernel checks' random inputs and of both training runs "
                        "(initial parameters and data order) (1)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds before one model's kernel checks or a training run count as "
                        "hung (1800)")  # fmt: skip
    p.add_argument("--json", default=None,
                   help="also write the JSON report here (rewritten after every section)")
    p.add_argument("--in-process", action="store_true",
                   help="check the kernels in this process, not in a child per model (a crash "
                        "in the framework then ends the script without a report)")
    p.add_argument("--child-kernels", help=argparse.SUPPRESS)  # internal: one model, in a child
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child_kernels:
        rt = AneRuntime()
        try:
            result = kernels_here(args.child_kernels, rt, args.seed)
        finally:
            rt.close()
        Path(args.child_out).write_text(json.dumps(result, default=str))
        return 0

    report: dict = {"machine": machine(), "models": {}, "train": {}}
    if report["machine"]["old_macos"]:
        print(f"warning: {report['machine']['old_macos']}; expect the compiles to fail")
    if report["machine"]["rosetta"]:
        print(f"warning: {ROSETTA}")
    rows: list[tuple[str, bool, str]] = []
    rt = open_framework(report, rows)
    save(args.json, report)
    try:
        for name in [m for m in args.models.split(",") if m and rt is not None]:
            if args.in_process:
                r = kernels_here(name, rt, args.seed)
            else:
                print(f"checking {name}'s kernels (in a child process) ...", flush=True)
                r = kernels_in_child(name, args.seed, args.timeout)
            if "rows" in r:
                rows += [tuple(row) for row in r["rows"]]
                report["models"][name] = r["model"]
                report["compiles"] += r["compiles"]
            else:  # the child crashed or hung
                report["models"][name] = r
                rows.append((f"{name}: kernel checks", False, r["error"]))
            save(args.json, report)
    finally:
        if rt is not None:
            rt.close()

    sizes = ANE_TINY if args.train_model == "tiny" and not report["framework"]["mock"] else None
    for backend in ("ane", "cpu"):
        print(f"training {args.train_model} {args.steps} steps on {backend} ...", flush=True)
        report["train"][backend] = train(backend, args.train_model, args.steps, args.seed, sizes,
                                         args.timeout)  # fmt: skip
        save(args.json, report)
    a, c = report["train"]["ane"], report["train"]["cpu"]
    for backend, r in (("ane", a), ("cpu", c)):
        rows.append((f"train {args.train_model} {args.steps} steps on {backend}", r["ok"],
                     f"{r['wall_s']:.1f} s" if r["ok"] else r["error"]))
    if a["ok"] and c["ok"]:
        first = abs(a["losses"][0] / c["losses"][0] - 1)
        final = abs(a["losses"][-1] / c["losses"][-1] - 1)
        report["train"]["first_loss_rel"], report["train"]["final_loss_rel"] = first, final
        rows.append(("first loss ane vs cpu (<= 1%)", first <= 0.01, f"{100 * first:.3f}%"))
        rows.append(("final loss ane vs cpu (<= 5%)", final <= 0.05, f"{100 * final:.3f}%"))

    print(f"\n{'check':48s} {'result':6s} detail")
    for what, ok, detail in rows:
        print(f"{what:48s} {'PASS' if ok else 'FAIL':6s} {detail}")
    passed = all(ok for _, ok, _ in rows)
    report["pass"] = passed
    print("\n" + save(args.json, report))
    return 0 if passed else 1


def model_rows(name: str, rt: AneRuntime, seed: int, models: dict) -> list[tuple[str, bool, str]]:
    """Check one model's kernels into models[name]; its table rows."""
    try:
        r = models[name] = check_kernels(name, rt, seed)
    except (ConfigError, MilError, AneError) as e:
        # not ANE-aligned or refused before any compile: a failed row with the reason
        models[name] = {"error": f"{type(e).__name__}: {e}"}
        return [(f"{name}: compile 10 kernels", False, f"{type(e).__name__}: {e}")]
    comp = r["compile"]
    bad = [k for k, v in comp.items() if not v["ok"]]
    n_warn = sum(len(v["warnings"]) for v in comp.values())
    warn = f", {n_warn} checker warnings (see JSON)" if n_warn else ""
    if bad:
        rows = [(f"{name}: compile 10 kernels", False, f"{len(bad)} of {len(comp)} failed{warn}")]
        return rows + [(f"{name}: compile {k}", False, comp[k]["error"]) for k in bad]
    total = sum(v["compile_s"] for v in comp.values())
    rows = [(f"{name}: compile 10 kernels", len(comp) == 10, f"{total:.3f} s{warn}")]
    for k, v in r["kernels"].items():
        rows.append((f"{name}: {k} vs cpu", v["ok"], v.get("error") or f"rel "
                     f"{v['rel_l2']:.2e} max {v['max_rel']:.2e}, eval "
                     f"{1e3 * v['eval_s']:.2f} ms"))  # fmt: skip
    o = r["overflow"]
    detail = o.get("error") or (f"{o['inf']} inf, {o['nan']} NaN" if o["ok"] else "no inf/NaN, "
                                f"largest {o['max_finite']}: saturating? loss scaling would miss "
                                "overflows")  # fmt: skip
    return rows + [(f"{name}: fp16 overflow gives inf/NaN", o["ok"], detail)]


if __name__ == "__main__":
    sys.exit(main())
