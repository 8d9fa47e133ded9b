"""Make a series of training checkpoints for `llmprune analyze checkpoints` (the paper's Fig. 8).

Trains a tiny LLaMA from a config (hidden 64, 4 layers, byte-level vocabulary of 256, so no tokenizer is
needed) on real English text (`llmprune.data.load_text(None, "train")`: Python's pydoc topics) with AdamW on
CPU, and saves `OUT/checkpoint-<step>/` (config.json + model.safetensors) every `--every` steps, step 0
(the random init) included. A few hundred steps take a minute or two on one core.

    .venv/bin/python examples/make_checkpoint_series.py -o /tmp/series --steps 400 --every 25
    .venv/bin/llmprune analyze checkpoints /tmp/series -o /tmp/series-analysis
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import transformers

from llmprune.data import load_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a shared 2-core machine
    data = torch.frombuffer(bytearray(load_text(None, "train").encode()), dtype=torch.uint8).long()  # (n,) bytes
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.seqlen)
    model = transformers.LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))  # short warm-up
    args.output.mkdir(parents=True, exist_ok=True)
    log = []

    def save(step: int, loss: float | None) -> None:
        folder = args.output / f"checkpoint-{step}"
        model.save_pretrained(folder)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "loss": loss}))

    save(0, None)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(data) - args.seqlen - 1, (args.batch,))
        ids = torch.stack([data[s:s + args.seqlen] for s in starts])  # (batch, seqlen)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            save(step, loss.item())
            log.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - t0})
            print(f"step {step:5d}  loss {loss.item():.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    (args.output / "train_log.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "log": log}, indent=1))


if __name__ == "__main__":
    main()
