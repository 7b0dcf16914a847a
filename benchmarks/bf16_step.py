"""bf16 autocast vs fp32 per training step on this CPU: one LoRA step of all-MiniLM-L6-v2 (the main job's model).

    python benchmarks/bf16_step.py [--rounds 3] [--steps 4] [--batch 32] [--tokens 48]

The contenders are interleaved in rounds (one warm-up step each, then `--steps` timed steps); per round it prints
the wall and CPU seconds per step and the bf16/fp32 ratio, then the medians. `bf16_native` says whether the CPU
has AVX-512 BF16 or AMX (where bf16 is expected to win) or not (torch emulates it, and it loses).
"""
import argparse, os, statistics, time

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch

from workbench.train import TrainConfig, bf16_native, build_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(TrainConfig(max_length=64), [f"c{i}" for i in range(8)]).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randint(1000, 20000, (a.batch, a.tokens))
    mask = torch.ones_like(x)
    y = torch.randint(0, 8, (a.batch,))

    def step(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x, attention_mask=mask).logits
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()
        opt.zero_grad()

    runs = {False: [], True: []}
    for r in range(a.rounds):
        for bf16 in (False, True):
            step(bf16)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(a.steps): step(bf16)
            runs[bf16].append(((time.perf_counter() - t0) / a.steps, (time.process_time() - c0) / a.steps))
        f, b = runs[False][-1], runs[True][-1]
        print(f"round {r + 1}: fp32 {f[0]:.3f} s/step ({f[1]:.3f} CPU s), bf16 {b[0]:.3f} s/step ({b[1]:.3f} CPU s), "
              f"bf16/fp32 {b[0] / f[0]:.2f}")
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    print(f"bf16_native: {bf16_native('cpu')}; median s/step fp32 {med[False]:.3f}, bf16 {med[True]:.3f}; "
          f"bf16/fp32 {med[True] / med[False]:.2f}; per-round ratios "
          f"{[round(b[0] / f[0], 2) for f, b in zip(runs[False], runs[True])]}")


if __name__ == "__main__":
    main()
