"""Sharded training (``parallelism: fsdp``) against one process and against DDP, on CPU processes (gloo).

    python bench/fsdp.py equality            # 1 process vs 2 sharded: GRPO and DPO, 2 steps (tiny model)
    python bench/fsdp.py memory [--steps 4]  # 2 x DDP vs 2 x FSDP on a ~300M-parameter Llama built from its config

``equality`` runs the scripts of ``tests/test_fsdp.py`` (the same batches, one process or split over
two) and prints the largest relative difference of the loss and grad norm over the steps and the
largest absolute difference of the final weights (read from each run's ``final/``).

``memory`` trains the DPO trainer for ``--steps`` steps on a Llama of 24 layers x 1024 built from a
config (SmolLM2's vocabulary, seeded, fp32, no download) with each parallelism, 2 processes. Each
process resets its peak RSS (``/proc/self/clear_refs``) once the trainer is set up, so the peak it
reports is that of training (weights, gradients, AdamW's state, activations); the peak over the
whole process (loading included) is printed beside it. Step time: the median of the steps after
the first. Prints the CPU and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{info.get('Model name', '?').strip()} (family {info.get('CPU family', '?').strip()} model {info.get('Model', '?').strip()}), {os.cpu_count()} CPUs, flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"


def launch(*args: str, processes: int = 1, threads: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone"] if processes > 1 else []
    proc = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])


def equality() -> None:
    from conftest import tiny_causal_lm
    from safetensors.torch import load_file
    from test_fsdp import OFFLINE, ONLINE, WORDS
    from transformers import AutoTokenizer

    from rlvr.models import resolve_model

    tmp = Path(tempfile.mkdtemp(prefix="rlvr-fsdp-eq-"))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    model_dir = tmp / "tiny"
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(
        json.dumps({"prompt": [{"role": "user", "content": f"Say something about {w}."}], "chosen": f"{w} are nice.", "rejected": "no"}) + "\n"
        for w in WORDS
    ))  # fmt: skip
    cases = [
        ("grpo", ONLINE, {"beta": 0.05}),
        ("grpo", ONLINE, {"beta": 0.05, "lora_r": 4}),
        ("dpo", OFFLINE, {}),
        ("dpo", OFFLINE, {"lora_r": 4}),
    ]
    print(f"CPU: {cpu()}\n")
    print("| trainer | settings | loss, max rel. diff | grad norm, max rel. diff | final weights, max abs. diff |")
    print("|---|---|---|---|---|")
    for name, script_text, overrides in cases:
        out = tmp / f"{name}-{len(overrides)}-{overrides.get('lora_r', 0)}"
        out.mkdir()
        script = out / "run.py"
        script.write_text(script_text)
        extra = [str(pairs)] if script_text is OFFLINE else []
        launch(str(script), str(model_dir), str(out), name, *extra, json.dumps(overrides))
        launch(str(script), str(model_dir), str(out), name, *extra, json.dumps({**overrides, "parallelism": "fsdp"}), processes=2)
        h1, h2 = (json.loads((out / f"history-{t}.json").read_text()) for t in ("1-ddp", "2-fsdp"))
        rel = {k: max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in zip(h1, h2)) for k in ("loss", "grad_norm")}
        w1, w2 = (load_file(str(out / f"final-{t}" / "model.safetensors")) for t in ("1-ddp", "2-fsdp"))
        worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
        print(f"| {name} | {json.dumps(overrides)} | {rel['loss']:.1e} | {rel['grad_norm']:.1e} | {worst:.1e} |")


MEMORY = textwrap.dedent(
    """
    import json, statistics, sys, time
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from rlvr.models import resolve_model
    from rlvr.preferences import load_pairs
    from rlvr.trainers.dpo_config import DPOConfig
    from rlvr.trainers.dpo_trainer import DPOTrainer
    from rlvr.trainers.run import finish_processes

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return 0

    if __name__ == "__main__":
        out, parallelism, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
        tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2048, num_hidden_layers=24, num_attention_heads=16,
            num_key_value_heads=16, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
        n_params = sum(p.numel() for p in model.parameters())
        words = ["cats", "rain", "trees", "bread", "stone", "wind", "sea", "salt"]
        rows = [{"prompt": [{"role": "user", "content": f"Say something long about {w}, please."}],
                 "chosen": f"{w} are nice, " * 6, "rejected": "no " * 12} for w in words]
        cfg = DPOConfig(max_steps=steps, batch_size=4, micro_batch_size=1, learning_rate=1e-5, bf16=False, progress_bar=False,
                        output_dir=out, save_final_model=False, parallelism=parallelism, max_length=128)
        trainer = DPOTrainer(cfg, model=model, tokenizer=tokenizer, pairs=load_pairs(rows))
        del model
        setup_peak = status("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS: from here on it is training's
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.training_step()
            times.append(time.perf_counter() - start)
        result = {"rank": trainer.rank, "params": n_params, "train_peak": status("VmHWM"), "setup_peak": setup_peak,
                  "rss_after": status("VmRSS"), "step_s": statistics.median(times[1:]), "times": times,
                  "loss": [h["loss"] for h in trainer.history]}
        with open(f"{out}/memory-{parallelism}-{trainer.rank}.json", "w") as f:
            json.dump(result, f)
        finish_processes()
    """
)


def memory(steps: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rlvr-fsdp-mem-"))
    script = tmp / "memory.py"
    script.write_text(MEMORY)
    print(f"CPU: {cpu()}\n")
    rows = {}
    for parallelism in ("ddp", "fsdp"):
        launch(str(script), str(tmp), parallelism, str(steps), processes=2)
        rows[parallelism] = [json.loads((tmp / f"memory-{parallelism}-{r}.json").read_text()) for r in (0, 1)]
    gib = 1 << 30
    params = rows["ddp"][0]["params"]
    print(f"model: Llama, 24 layers x 1024, {params / 1e6:.0f}M parameters (fp32); DPO, batch 4 pairs, micro-batch 1, max_length 128\n")
    print("| parallelism | peak RSS in training, per process (GiB) | peak RSS with loading (GiB) | step time, median (s) | losses |")
    print("|---|---|---|---|---|")
    for parallelism, ranks in rows.items():
        peak = max(r["train_peak"] for r in ranks) / gib
        setup = max(max(r["setup_peak"], r["train_peak"]) for r in ranks) / gib
        step = statistics.mean(r["step_s"] for r in ranks)
        losses = ", ".join(f"{x:.5f}" for x in ranks[0]["loss"])
        print(f"| {parallelism} | {peak:.2f} | {setup:.2f} | {step:.2f} | {losses} |")
    ratio = max(r["train_peak"] for r in rows["fsdp"]) / max(r["train_peak"] for r in rows["ddp"])
    time_ratio = statistics.mean(r["step_s"] for r in rows["fsdp"]) / statistics.mean(r["step_s"] for r in rows["ddp"])
    print(f"\nfsdp / ddp: peak RSS in training {ratio:.2f}x, step time {time_ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("equality", "memory"))
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    equality() if args.what == "equality" else memory(args.steps)


if __name__ == "__main__":
    main()
