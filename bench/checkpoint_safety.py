"""What the checksums cost: a checkpoint of SmolLM2-135M written with and without them, and checked.

    python bench/checkpoint_safety.py [--repeat 3] [--dir /tmp/ckpt-bench]

The checkpoint is what every full fine-tuning run writes (``run.save_checkpoint``: the
trainable weights, AdamW's two moments after one step, the RNG states), into ``--dir``.
"With checksums" is the default path (each file hashed with SHA-256 and synced to disk, then
``checksums.json``); "without" replaces :func:`rlvr.trainers.run.write_checksums` with
nothing. "Check" is what ``--resume`` does first (:func:`rlvr.trainers.run.damaged_files`).
The median of ``--repeat`` runs of each is printed, alternating.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/ckpt-bench")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.models import resolve_model
    from rlvr.trainers import run

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    processes = run.Processes()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    real = run.write_checksums
    times: dict[str, list[float]] = {"with checksums": [], "without": [], "check": []}
    for i in range(args.repeat):
        for label in ("with checksums", "without"):
            run.write_checksums = real if label == "with checksums" else (lambda directory: None)
            path = base / f"checkpoint-{i}-{label.split()[0]}"
            start = time.perf_counter()
            run.save_checkpoint(path, processes, model, optimizer, scheduler, {"step": i}, {})
            times[label].append(time.perf_counter() - start)
        run.write_checksums = real
        start = time.perf_counter()
        assert run.damaged_files(base / f"checkpoint-{i}-with") == []
        times["check"].append(time.perf_counter() - start)
    size = sum(f.stat().st_size for f in (base / "checkpoint-0-with").iterdir()) / (1 << 20)
    print(f"checkpoint of SmolLM2-135M (fp32 weights + AdamW moments): {size:.0f} MiB, {args.repeat} runs each (median)")
    print("| write / check | median s | min s | max s |")
    print("|---|---|---|---|")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
