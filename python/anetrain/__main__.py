"""python -m anetrain <command> [options]: one entry point for every command-line tool."""

from __future__ import annotations

import importlib
import sys

# command -> (module with a main(argv), one-line summary)
COMMANDS = {
    "train": ("anetrain.train", "train or fine-tune a model (cpu, sim or the ANE)"),
    "sample": ("anetrain.sample", "generate text from an anetrain, llama2.c or Hugging Face model"),
    "export": ("anetrain.export", "write a model as llama2.c model.bin or Hugging Face directory"),
    "eval": ("anetrain.eval", "loss and perplexity of a model over every token of a data split"),
    "fuse": ("anetrain.fuse", "merge LoRA adapters (a run or a PEFT directory) into their base"),
    "bench": ("anetrain.bench.__main__", "benchmarks: cpu, sim, overlap, hf, dist (mpirun), lora"),
    "dashboard": ("anetrain.dashboard", "watch a run: loss, throughput, phases, memory, power"),
    "plot": ("anetrain.plot", "plot runs' loss and learning-rate curves to a PNG or SVG"),
    "probe": ("anetrain.probe", "measure this ANE: kernel times, conv TFLOPS, compile ceiling"),
}


def usage() -> str:
    lines = ["usage: python -m anetrain <command> [options]", "", "commands:"]
    lines += [f"  {name:9s} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "python -m anetrain <command> --help describes each command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"anetrain: error: unknown command {name!r} (choose from "
              f"{', '.join(COMMANDS)})", file=sys.stderr)  # fmt: skip
        return 2
    return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
