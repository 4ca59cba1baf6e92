"""One `bench lora` measurement in its own process: our training loop, PEFT, or the latency model.

python -m anetrain.bench.lora_child {ours,peft,latency} SPEC_JSON prints, as its last stdout
line, `RESULT ` + one JSON object. Started by bench lora only: each measurement is a fresh
process so that its peak RSS is its own. Numpy-free at import (the BLAS threads are set first).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from anetrain.train import BLAS_VARS  # numpy-free

RESULT = "RESULT "
# --lora-targets name -> the Hugging Face / PEFT module name
HF_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
              "up": "up_proj", "down": "down_proj"}  # fmt: skip


def vm_hwm_mb() -> float:
    """This process's peak resident memory so far: VmHWM (Linux), else getrusage's maximum."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _pin_threads(threads: int) -> None:
    """BLAS / OpenMP threads before numpy or torch loads (what train.py sets for --backend cpu)."""
    for var in BLAS_VARS:
        os.environ[var] = str(threads)


def ours(spec: dict) -> dict:
    """`python -m anetrain.train --init CKPT ...` in this process, LoRA or full fine-tuning; the
    per-step `ms` of its metrics.jsonl, and VmHWM just before its end-of-run checkpoint write
    (the only one: --ckpt-every is beyond --steps) and after it."""
    _pin_threads(spec["threads"])
    from anetrain.formats import checkpoint
    from anetrain.train import main as train_main

    out = Path(spec["run_dir"])
    argv = ["--init", spec["ckpt"], "--data", spec["data"], "--vocab-size", str(spec["vocab"]),
            "--backend", "cpu", "--steps", str(spec["steps"]), "--threads", str(spec["threads"]),
            "--ckpt-every", "1000000", "--out", str(out), "--quiet"]  # fmt: skip
    if spec["lora_rank"]:
        argv += ["--lora-rank", str(spec["lora_rank"]), "--lora-targets", spec["targets"]]
    hwm: dict[str, float] = {}
    real_save = checkpoint.save

    def save(path, ck) -> None:  # train.py reads checkpoint.save at call time
        hwm.setdefault("before_save", vm_hwm_mb())
        real_save(path, ck)

    checkpoint.save = save
    code = train_main(argv)
    if code:
        raise SystemExit(f"anetrain.train {' '.join(argv)}: exit {code}")
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    return {"ms": [r["ms"] for r in recs], "loss": [r["loss"] for r in recs],
            "hwm_train_mb": hwm.get("before_save"), "hwm_end_mb": vm_hwm_mb()}  # fmt: skip


def _hf_model(cfg, attn: str):
    """transformers' LlamaForCausalLM with our config's shape, random init, fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim,
                     intermediate_size=cfg.hidden_dim, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                     head_dim=cfg.head_dim, max_position_embeddings=cfg.seq_len,
                     rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                     tie_word_embeddings=cfg.shared_classifier)  # fmt: skip
    hf._attn_implementation = attn
    return LlamaForCausalLM(hf).float()


def peft(spec: dict) -> dict:
    """PEFT LoRA on transformers' Llama in PyTorch eager fp32: forward, cross-entropy, backward,
    clip_grad_norm_ 1.0, AdamW over the adapters, per step (batch 1); VmHWM at the end."""
    _pin_threads(spec["threads"])
    import torch
    from peft import LoraConfig, get_peft_model

    from anetrain.config import ModelConfig

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    cfg = ModelConfig.from_dict(spec["model"])
    rank = spec["lora_rank"]
    targets = [HF_MODULES[t] for t in spec["targets"].split(",")]
    model = get_peft_model(_hf_model(cfg, spec["attn"]), LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0))  # fmt: skip
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    toks = torch.randint(0, cfg.vocab_size, (spec["steps"], cfg.seq_len + 1))
    ms, losses = [], []
    for w in toks:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=w[None, :-1]).logits[0]  # [S, V]
        loss = torch.nn.functional.cross_entropy(logits, w[1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(loss.item())
        ms.append(1000.0 * (time.perf_counter() - t0))
        del logits, loss
    return {"ms": ms, "loss": losses, "hwm_train_mb": vm_hwm_mb(), "hwm_end_mb": vm_hwm_mb()}


def latency(spec: dict) -> dict:
    """bench overlap's latency-model step (M4 kernel times), full fine-tuning then LoRA."""
    _pin_threads(1)  # as training on sim/ane: BLAS on one thread, the dW jobs on the workers
    from anetrain.bench import overlap
    from anetrain.config import preset
    from anetrain.lora import LoraConfig

    cfg = preset(spec["model"])
    seconds = overlap.m4_seconds(cfg)
    lc = LoraConfig(spec["lora_rank"], targets=tuple(spec["targets"].split(",")))
    res = {}
    for side, lora in (("full", None), ("lora", lc)):
        rows = overlap.run(cfg, seconds, spec["steps"], 1, lora=lora)["rows"]
        res[side] = {k: [r[k] for r in rows] for k in ("step", "kernel", "critical", "cpu_busy")}
    return res


KINDS = {"ours": ours, "peft": peft, "latency": latency}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: python -m anetrain.bench.lora_child {{{','.join(KINDS)}}} SPEC_JSON "
              "(started by python -m anetrain.bench lora)", file=sys.stderr)  # fmt: skip
        return 2
    res = KINDS[argv[0]](json.loads(argv[1]))
    print(RESULT + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
