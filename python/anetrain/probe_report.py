"""The probe's JSON (schema, validator, reader) and its tables: one result, or two side by side."""

from __future__ import annotations

import json
from pathlib import Path

from anetrain.errors import UserError

SCHEMA = 2  # 2 added "background_compile"; schema 1 results (without it) still load
READS = (1, 2)
RUNTIMES = ("ane", "mock", "sim")
# what each runtime's figures are (the table's and --compare's header line)
RUNTIME_LABEL = {
    "ane": "the Apple Neural Engine",
    "mock": "MOCK framework (tests/mock) evaluating in the simulator: not ANE figures",
    "sim": "SIMULATOR (numpy, mil/sim.py): not ANE figures",
}
# the model fields the ten kernels' shapes depend on (bench overlap --kernel-times compares them)
KERNEL_SHAPE = ("dim", "hidden_dim", "n_heads", "n_kv_heads", "head_size", "seq_len", "qk_norm")


class ProbeFileError(UserError):
    """A probe JSON that cannot be read, or is not a probe result of this schema."""


NUM = (int, float)
OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))
# key -> type(s) of the top level and of each section; a section may instead be {"error": str}
TOP = {"schema": int, "tool": str, "anetrain": str, "runtime": str, "framework": OPT_STR,
       "chip": str, "macos": OPT_STR, "machine": str, "python": str, "date": str, "model": dict,
       "reps": int, "kernels": dict, "staging": dict, "ladder": list, "pingpong": dict,
       "ceiling": dict, "notes": list}  # fmt: skip
MODEL = {"name": str, "config": dict}
KERNEL = {"compile_ms": NUM, "eval_ms": NUM, "gflop": NUM, "tflops": NUM}
STAGING = {"kernel": str, "bytes": int, "pack_gbs": NUM, "unpack_gbs": NUM}
LADDER = {"depth": int, "channels": int, "spatial": int, "gflop": NUM, "compile_ms": NUM,
          "eval_ms": NUM, "tflops": NUM}  # fmt: skip
PINGPONG = {"a_ms": NUM, "b_ms": NUM, "alternating_ms": NUM, "switch_ms": NUM}
BACKGROUND_COMPILE = {"eval_program": str, "compile_program": str, "eval_ms": NUM,
                      "eval_during_ms": OPT_NUM, "evals_during": int, "slowdown": OPT_NUM,
                      "compile_fg_ms": NUM, "compile_bg_ms": OPT_NUM, "compile_slowdown": OPT_NUM,
                      "evaluated": bool, "compiled": bool, "error": OPT_STR}  # fmt: skip
CEILING = {"compiles": int, "max": int, "refused": bool, "error": OPT_STR, "compile_ms": NUM,
           "process_compiles": int}  # fmt: skip


def _fields(d: object, spec: dict, where: str, may_fail: bool = False) -> list[str]:
    """Problems of d against spec: a missing key, or a value of the wrong type. With may_fail, a
    section {"error": "<text>"} (the probe could not measure it) is valid too."""
    if not isinstance(d, dict):
        return [f"{where}: expected an object"]
    if may_fail and set(d) == {"error"} and isinstance(d["error"], str):
        return []
    out = []
    for k, t in spec.items():
        if k not in d:
            out.append(f"{where}: missing {k!r}")
        elif not isinstance(d[k], t) or (isinstance(d[k], bool) and t is not bool):
            out.append(f"{where}.{k}: wrong type {type(d[k]).__name__}")
    return out


def validate(doc: object) -> list[str]:
    """Every way `doc` is not a probe result of this schema (empty: valid)."""
    probs = _fields(doc, TOP, "probe")
    if probs:
        return probs
    assert isinstance(doc, dict)
    if doc["schema"] not in READS:
        reads = ", ".join(map(str, READS))
        return [f"probe: schema {doc['schema']} (this anetrain reads {reads})"]
    if doc["runtime"] not in RUNTIMES:
        probs.append(f"probe.runtime: {doc['runtime']!r} is not one of {', '.join(RUNTIMES)}")
    probs += _fields(doc["model"], MODEL, "probe.model")
    for name, k in doc["kernels"].items():
        probs += _fields(k, KERNEL, f"probe.kernels.{name}", may_fail=True)
    probs += _fields(doc["staging"], STAGING, "probe.staging", may_fail=True)
    for i, row in enumerate(doc["ladder"]):
        probs += _fields(row, LADDER, f"probe.ladder[{i}]", may_fail=True)
    probs += _fields(doc["pingpong"], PINGPONG, "probe.pingpong", may_fail=True)
    if doc["schema"] >= 2:
        probs += _fields(doc, {"background_compile": dict}, "probe")
        if isinstance(doc.get("background_compile"), dict):
            probs += _fields(doc["background_compile"], BACKGROUND_COMPILE,
                             "probe.background_compile", may_fail=True)  # fmt: skip
    probs += _fields(doc["ceiling"], CEILING, "probe.ceiling", may_fail=True)
    if not all(isinstance(n, str) for n in doc["notes"]):
        probs.append("probe.notes: expected strings")
    return probs


def load(path: str | Path) -> dict:
    """A probe result from `path`, validated; ProbeFileError naming the file otherwise."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ProbeFileError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProbeFileError(f"{path}: not JSON ({e})") from None
    probs = validate(doc)
    if probs:
        more = f" (+{len(probs) - 1} more)" if len(probs) > 1 else ""
        raise ProbeFileError(f"{path}: not an anetrain probe result: {probs[0]}{more}")
    return doc


# ---- tables ----------------------------------------------------------------------------------


def failed(section: dict) -> bool:
    """True for a section the probe could not measure: {"error": "<text>"}."""
    return set(section) == {"error"}


def _f(v: object, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def rows(doc: dict) -> list[tuple[str, str]]:
    """(label, value) of every figure, in table order (shared by the table and --compare)."""
    out = [("runtime", doc["runtime"]), ("chip", doc["chip"]), ("macOS", doc["macos"] or "-"),
           ("anetrain", doc["anetrain"]), ("model", doc["model"]["name"])]  # fmt: skip
    for name, k in doc["kernels"].items():
        fig = f"{_f(k.get('compile_ms'), 1)} / {_f(k.get('eval_ms'))} / {_f(k.get('tflops'))}"
        out.append((f"{name} compile / eval ms / TFLOPS", "error" if failed(k) else fig))
    for r in doc["ladder"]:
        if failed(r):
            out.append(("conv ladder", "error"))
            continue
        out.append((f"conv {r['depth']}x {r['channels']}ch sp{r['spatial']} eval ms / TFLOPS",
                    f"{_f(r['eval_ms'])} / {_f(r['tflops'])}"))  # fmt: skip
    s, p, c = doc["staging"], doc["pingpong"], doc["ceiling"]
    out.append(("staging pack / unpack GB/s", "error" if failed(s) else
                f"{_f(s['pack_gbs'], 2)} / {_f(s['unpack_gbs'], 2)}"))  # fmt: skip
    out.append(("ping-pong same / alternating ms", "error" if failed(p) else
                f"{_f(p['a_ms'])} / {_f(p['alternating_ms'])}"))  # fmt: skip
    out += _background_rows(doc.get("background_compile"))
    if failed(c):
        out.append(("sequential compiles", "error"))
    else:
        stop = "then refused" if c["refused"] else "= --max-compiles"
        out.append(("sequential compiles (process total)",
                    f"{c['compiles']} {stop} ({c['process_compiles']})"))  # fmt: skip
    return out


def _background_rows(bg: dict | None) -> list[tuple[str, str]]:
    """The compile-in-a-thread rows (none for a schema 1 result, which did not measure it)."""
    if bg is None:
        return []
    if failed(bg):
        return [("compile in a background thread", "error")]
    slow = f" ({_f(bg['slowdown'], 2)}x)" if bg["slowdown"] is not None else ""
    return [("eval ms alone / during a background compile",
             f"{_f(bg['eval_ms'])} / {_f(bg['eval_during_ms'])}{slow}"),
            ("compile ms alone / in a thread while evaluating",
             f"{_f(bg['compile_fg_ms'], 1)} / {_f(bg['compile_bg_ms'], 1)}")]  # fmt: skip


def table(doc: dict) -> str:
    """One probe result as a table, headed by what its figures are."""
    lines = [f"anetrain probe on {RUNTIME_LABEL[doc['runtime']]}"]
    lines += [f"  {label:48s} {value}" for label, value in rows(doc)]
    errors = [(n, k["error"]) for n, k in doc["kernels"].items() if failed(k)]
    errors += [(s, doc[s]["error"]) for s in ("staging", "pingpong", "ceiling") if failed(doc[s])]
    errors += [("conv ladder", r["error"]) for r in doc["ladder"] if failed(r)]
    bg = doc.get("background_compile")
    if bg is not None and bg["error"] is not None:
        errors.append(("the compile in a background thread", bg["error"]))
    if not failed(doc["ceiling"]) and doc["ceiling"]["refused"]:
        errors.append(("the last sequential compile", doc["ceiling"]["error"]))
    lines += [f"  error in {name}: {msg}" for name, msg in errors]
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def compare(a: dict, b: dict, names: tuple[str, str]) -> str:
    """Two probe results side by side (the rows of the first, then any only the second has)."""
    ra, rb = dict(rows(a)), dict(rows(b))
    labels = list(ra) + [k for k in rb if k not in ra]
    w = max(len(v) for v in (*ra.values(), *rb.values()))
    lines = [f"A: {names[0]}", f"B: {names[1]}", f"{'':48s} {'A':>{w}s}   {'B':>{w}s}"]
    lines += [f"{k:48s} {ra.get(k, '-'):>{w}s}   {rb.get(k, '-'):>{w}s}" for k in labels]
    for n, d in zip(names, (a, b)):
        if d["runtime"] != "ane":
            lines.append(f"note: {n}: {RUNTIME_LABEL[d['runtime']]}")
    return "\n".join(lines)


def kernel_seconds(doc: dict, cfg_dict: dict, path: str) -> dict[str, float]:
    """Seconds per evaluation of each of the ten kernels from a probe result, for the model
    whose to_dict() is cfg_dict; ProbeFileError unless it measured all ten at that shape."""
    from anetrain.mil.kernels import KERNELS

    got = doc["model"]["config"]
    diff = [k for k in KERNEL_SHAPE if got.get(k) != cfg_dict.get(k)]
    if diff:
        k = diff[0]
        raise ProbeFileError(f"{path}: measured model {doc['model']['name']!r} has {k} "
                             f"{got.get(k)}, this model {cfg_dict.get(k)}")  # fmt: skip
    missing = [n for n in KERNELS if "eval_ms" not in doc["kernels"].get(n, {})]
    if missing:
        raise ProbeFileError(f"{path}: no evaluation time for kernel(s) {', '.join(missing)}")
    return {n: doc["kernels"][n]["eval_ms"] / 1e3 for n in KERNELS}
