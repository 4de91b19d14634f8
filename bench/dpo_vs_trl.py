"""rlvr DPO vs TRL ``DPOTrainer``: seconds per optimizer step on the same job, in one run.

Same model (SmolLM2-135M-Instruct via ``rlvr.models.resolve_model``), same pairs (arithmetic
prompts from rlvr's ``arithmetic`` environment with its system prompt, a correct and a wrong
boxed answer; or ``--pairs FILE``), same batch (8 pairs per step, one micro-batch: chosen and
rejected in one forward), same length limit (``max_length`` 512, nothing is cut at that length),
same loss (``sigmoid``, beta 0.1), same learning rate, same precision (bf16 autocast on a CPU
with AMX or on CUDA, fp32 otherwise; ``--precision`` forces one), 10 steps each, one run each.
Model loading and TRL's dataset tokenization are outside the timed steps.

Other settings are each framework's own defaults, as its user gets them; the one that matters
for speed is TRL's ``gradient_checkpointing=True`` (its DPOConfig default; rlvr's is off).
``--trl-gradient-checkpointing off`` runs TRL without it. The table says which CPU ran it.

    python bench/dpo_vs_trl.py                                    # both, 10 steps each
    python bench/dpo_vs_trl.py --trl-gradient-checkpointing off
    python bench/dpo_vs_trl.py --only rlvr --steps 5

Prints a JSON line per framework and a Markdown table (also appended to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_vs_trl import cpu_description  # noqa: E402 -- the same CPU line as the GRPO benchmark

MODEL = "smollm2-135m-instruct"
BATCH = 8
MAX_LENGTH = 512
LR = 1e-6
BETA = 0.1


def make_pairs(n: int = 200) -> list[dict]:
    """Arithmetic prompts (with the environment's system prompt) and a right and a wrong boxed answer."""
    from rlvr.environments.arithmetic import Arithmetic

    rows = []
    for t in Arithmetic(n_train=n, seed=0).tasks("train")[:n]:
        answer = int(t.reference)
        rows.append({
            "prompt": t.prompt,
            "chosen": f"Adding the numbers step by step gives {answer}. The answer is \\boxed{{{answer}}}.",
            "rejected": f"Adding the numbers step by step gives {answer + 1}. The answer is \\boxed{{{answer + 1}}}.",
        })  # fmt: skip
    return rows


def load_rows(path: str | None) -> list[dict]:
    if not path:
        return make_pairs()
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def bf16_choice(precision: str) -> bool:
    import torch

    from rlvr.trainers.modeling import bf16_is_fast

    if precision == "auto":
        return bf16_is_fast(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return precision == "bf16"


def run_rlvr(steps: int, rows: list[dict], bf16: bool) -> dict:
    from rlvr.preferences import load_pairs
    from rlvr.trainers.dpo_config import DPOConfig
    from rlvr.trainers.dpo_trainer import DPOTrainer

    out = Path(tempfile.mkdtemp(prefix="bench-rlvr-dpo-"))
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DPOConfig(
        model=MODEL, pairs=str(out / "pairs.jsonl"), max_steps=steps, batch_size=BATCH, micro_batch_size=BATCH,
        max_length=MAX_LENGTH, max_prompt_length=None, learning_rate=LR, beta=BETA, loss_type="sigmoid", bf16=bf16,
        save_final_model=False, output_dir=str(out / "run"), progress_bar=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer = DPOTrainer(cfg, pairs=load_pairs(rows))
    setup = time.perf_counter() - start
    trainer.train()
    h = trainer.history
    return {
        "framework": "rlvr",
        "bf16": trainer.policy.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "setup_s": setup,
        "step_times_s": [r["step_time_s"] for r in h],
        "loss": [r["loss"] for r in h],
        "tokens_per_step": [r["train_tokens"] for r in h],
    }


def run_trl(steps: int, rows: list[dict], bf16: bool, gradient_checkpointing: bool | None) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer as TRLTrainer

    from rlvr.models import resolve_model

    # TRL's conversational format: the completions as assistant messages
    ds = Dataset.from_list([
        {"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in rows
    ])  # fmt: skip

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.last)

    path = resolve_model(MODEL)
    timer = Timer()
    args = TRLConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-dpo-"),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        max_length=MAX_LENGTH,
        max_steps=steps,
        learning_rate=LR,
        beta=BETA,
        loss_type=["sigmoid"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=bf16,
        seed=0,
        disable_tqdm=True,
        **({} if gradient_checkpointing is None else {"gradient_checkpointing": gradient_checkpointing}),
    )
    start = time.perf_counter()
    trainer = TRLTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(path),
        callbacks=[timer],
    )
    setup = time.perf_counter() - start
    trainer.train()
    return {
        "framework": "trl",
        "bf16": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "setup_s": setup,
        "step_times_s": timer.times,
        "loss": [r["loss"] for r in trainer.state.log_history if "loss" in r],
    }


def _switch(value: str) -> bool | None:
    return {"on": True, "off": False}.get(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", choices=["rlvr", "trl"])
    parser.add_argument("--pairs", help="a pairs JSONL file (default: arithmetic prompts with a right and a wrong answer)")
    parser.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help="both sides (auto: bf16 where it is fast)"
    )
    parser.add_argument("--trl-gradient-checkpointing", choices=["default", "on", "off"], default="default")
    parser.add_argument("--out", help="also append the Markdown table to this file")
    args = parser.parse_args()
    if args.only:  # one framework, in this process; its result is the last stdout line
        rows = load_rows(args.pairs)
        bf16 = bf16_choice(args.precision)
        result = (
            run_rlvr(args.steps, rows, bf16)
            if args.only == "rlvr"
            else run_trl(args.steps, rows, bf16, _switch(args.trl_gradient_checkpointing))
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = []
    for name in ("rlvr", "trl"):  # each in a fresh process
        cmd = [sys.executable, __file__, "--only", name, "--steps", str(args.steps), "--precision", args.precision]
        cmd += ["--trl-gradient-checkpointing", args.trl_gradient_checkpointing] + (["--pairs", args.pairs] if args.pairs else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not found:
            raise SystemExit(f"{name} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(found[-1][len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
    import torch

    lines = [
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"CPU: {cpu_description()}; torch threads {torch.get_num_threads()}; {BATCH} pairs per step, max_length {MAX_LENGTH}",
        "",
        "| framework | precision | gradient checkpointing | median step s | mean step s | min | max | setup s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["step_times_s"]
        lines.append(
            f"| {r['framework']} | {'bf16 autocast' if r['bf16'] else 'fp32'} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{statistics.median(t):.2f} | {statistics.mean(t):.2f} | {min(t):.2f} | {max(t):.2f} | {r['setup_s']:.1f} |"
        )
    if len(results) == 2:
        ratio = statistics.median(results[0]["step_times_s"]) / statistics.median(results[1]["step_times_s"])
        lines.append(f"\nrlvr median / TRL median = **{ratio:.2f}x** (target <= 0.8x)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
