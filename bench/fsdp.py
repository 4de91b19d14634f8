"""Sharded training (``parallelism: fsdp``) against one process and against DDP, on CPU processes (gloo).

    python bench/fsdp.py equality            # 1 process vs 2 sharded: GRPO and DPO, 2 steps (tiny model)
    python bench/fsdp.py memory [--steps 4 --rows 2 --length 128]  # 2 x DDP vs 2 x FSDP, ~300M-parameter Llama

``equality`` runs the scripts of ``tests/test_fsdp.py`` (the same batches, one process or split over
two) and prints the largest relative difference of the loss and grad norm over the steps and the
largest absolute difference of the final weights (read from each run's ``final/``).

``memory`` trains a Llama of 24 layers x 1024 (vocab 49152, ~300M parameters, fp32, built from a
config, seeded, no download) with rlvr's own plumbing -- ``modeling.load_policy`` (DDP wrapper or
FSDP2 shards), ``make_optimizer`` (AdamW), ``sync_gradients``, ``offline.sequence_logps`` -- on
random tokens, 2 processes, ``--steps`` steps of two micro-batches of ``--rows`` x ``--length``
tokens: the trainable state and nothing else (no reference model, no generation). Each process
records its RSS before any model (its baseline), resets its peak RSS once set up
(``/proc/self/clear_refs``), and reports the peak in training, the bytes of its weights,
gradients and AdamW moments (local shards under fsdp), and the median step after the first.
Runs ddp, fsdp, and fsdp with ``fsdp_reshard_after_forward: false``. Prints the CPU and a table.
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
sys.path.insert(0, str(REPO / "bench"))

from generation_server import cpu  # noqa: E402 -- the CPU line every benchmark here prints


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
    from transformers import LlamaConfig, LlamaForCausalLM
    from rlvr.trainers import modeling, offline
    from rlvr.trainers.config import TrainConfig
    from rlvr.trainers.run import Processes, finish_processes

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return 0

    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    if __name__ == "__main__":
        out, parallelism, reshard, steps, rows, length = sys.argv[1], sys.argv[2], sys.argv[3] == "1", *map(int, sys.argv[4:7])
        processes = Processes()
        baseline = status("VmRSS")  # python, torch, transformers: before any model
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=49152, hidden_size=1024, intermediate_size=2048, num_hidden_layers=24, num_attention_heads=16,
            num_key_value_heads=16, tie_word_embeddings=True,
        )
        cfg = TrainConfig(parallelism=parallelism, fsdp_reshard_after_forward=reshard, bf16=False, micro_batch_size=rows,
                          progress_bar=False, learning_rate=1e-5)
        policy = modeling.load_policy(cfg, processes, LlamaForCausalLM(config), tokenizer=type("T", (), {"pad_token_id": 0})())
        params = [p for p in policy.model.parameters() if p.requires_grad]
        optimizer = modeling.make_optimizer(cfg, params, policy.device)
        setup_peak = status("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS: from here on it is training's
        g = torch.Generator().manual_seed(1 + processes.rank)
        times, losses = [], []
        for step in range(steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for j in range(2):  # two micro-batches per step
                ids = torch.randint(1, 49152, (rows, length), generator=g)
                batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.ones_like(ids)}
                with modeling.sync_gradients(policy.train_model, j == 1):
                    logps, counts = offline.sequence_logps(policy.train_model, batch, False, policy.device)
                    loss = -(logps / counts).mean() / 2
                    loss.backward()
                total += float(loss)
            norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            optimizer.step()
            times.append(time.perf_counter() - start)
            losses.append((processes.sum(total)[0] / processes.world_size, norm))
        state = sum(nbytes(p) for p in params) + sum(nbytes(p.grad) for p in params if p.grad is not None)
        state += sum(nbytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
        result = {"rank": processes.rank, "params": sum(p.numel() for p in policy.model.parameters()) if parallelism == "ddp" else None,
                  "baseline": baseline, "setup_peak": setup_peak, "train_peak": status("VmHWM"), "rss_after": status("VmRSS"),
                  "state_bytes": state, "step_s": statistics.median(times[1:]), "times": times, "losses": losses}
        with open(f"{out}/memory-{parallelism}-{int(reshard)}-{processes.rank}.json", "w") as f:
            json.dump(result, f)
        finish_processes()
    """
)


def memory(steps: int, rows: int, length: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rlvr-fsdp-mem-"))
    script = tmp / "memory.py"
    script.write_text(MEMORY)
    print(f"CPU: {cpu()}\n")
    runs = {}
    for parallelism, reshard in (("ddp", 1), ("fsdp", 1), ("fsdp", 0)):
        launch(str(script), str(tmp), parallelism, str(reshard), str(steps), str(rows), str(length), processes=2)
        runs[parallelism, reshard] = [json.loads((tmp / f"memory-{parallelism}-{reshard}-{r}.json").read_text()) for r in (0, 1)]
    gib = 1 << 30
    params = runs["ddp", 1][0]["params"]
    print(f"model: Llama, 24 layers x 1024, vocab 49152, {params / 1e6:.0f}M parameters, fp32, AdamW; 2 processes; "
          f"{steps} steps of 2 micro-batches of {rows} x {length} tokens per process\n")  # fmt: skip
    print("| parallelism | trainable state per process (weights + grads + AdamW, GiB) | peak RSS in training above the "
          "process's baseline (GiB) | peak RSS in training (GiB) | step time, median (s) | loss, grad norm at the last step |")
    print("|---|---|---|---|---|---|")
    for (parallelism, reshard), ranks in runs.items():
        name = parallelism if parallelism == "ddp" else f"fsdp, reshard_after_forward {bool(reshard)}"
        state = max(r["state_bytes"] for r in ranks) / gib
        above = max(r["train_peak"] - r["baseline"] for r in ranks) / gib
        peak = max(r["train_peak"] for r in ranks) / gib
        step = statistics.mean(r["step_s"] for r in ranks)
        loss, norm = ranks[0]["losses"][-1]
        print(f"| {name} | {state:.2f} | {above:.2f} | {peak:.2f} | {step:.2f} | {loss:.6f}, {norm:.6f} |")
    ddp = runs["ddp", 1]
    for key in (("fsdp", 1), ("fsdp", 0)):
        f = runs[key]
        print(f"\nfsdp (reshard_after_forward {bool(key[1])}) / ddp: trainable state "
              f"{max(r['state_bytes'] for r in f) / max(r['state_bytes'] for r in ddp):.2f}x, peak RSS above baseline "
              f"{max(r['train_peak'] - r['baseline'] for r in f) / max(r['train_peak'] - r['baseline'] for r in ddp):.2f}x, "
              f"step time {statistics.mean(r['step_s'] for r in f) / statistics.mean(r['step_s'] for r in ddp):.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("equality", "memory"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=2, help="memory: sequences per micro-batch")
    parser.add_argument("--length", type=int, default=128, help="memory: tokens per sequence")
    args = parser.parse_args()
    equality() if args.what == "equality" else memory(args.steps, args.rows, args.length)


if __name__ == "__main__":
    main()
