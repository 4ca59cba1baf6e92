"""python -m anetrain.bench {cpu,sim,overlap,hf,dist,lora} [options]: dispatch to one benchmark."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "cpu": "anetrain.bench.cpu",  # cpu backend vs PyTorch eager, fp16 conversion throughput
    "sim": "anetrain.bench.sim",  # ANE simulator: all kernel evaluations of one micro-step
    "overlap": "anetrain.bench.overlap",  # latency-model runtime: kernel time vs CPU critical path
    "hf": "anetrain.bench.hf",  # Hugging Face shapes: cpu vs PyTorch, simulator, latency model
    "dist": "anetrain.bench.dist",  # under mpirun: gradient all-reduce, N ranks vs 1, scaling
    "lora": "anetrain.bench.lora",  # LoRA vs full fine-tuning vs PEFT (cpu, RSS); latency model
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m anetrain.bench {" + ",".join(BENCHES) + "} [options]")
        for name, mod in BENCHES.items():
            print(f"  {name:8s} {mod}")
        return 0 if argv else 2
    if argv[0] not in BENCHES:
        names = ", ".join(sorted(BENCHES))
        print(
            f"anetrain.bench: error: unknown benchmark {argv[0]!r} (choose from {names})",
            file=sys.stderr,
        )
        return 2
    try:
        mod = importlib.import_module(BENCHES[argv[0]])
    except ModuleNotFoundError as e:
        print(f"anetrain.bench: benchmark {argv[0]!r} is not available: {e}", file=sys.stderr)
        return 2
    return int(mod.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
