"""The Wanda and SparseGPT reference drivers' procedure, re-implemented on transformers 5: the same-session
baseline of `bench_calibrated.py`.

    python examples/reference_drivers.py MODEL_DIR --method wanda|sparsegpt [--samples 32] [--seqlen 512] [-o OUT]

What the reference repositories (locuslab/wanda `prune_wanda`, IST-DASLab/sparsegpt `llama_sequential`) do,
step for step, so that their cost can be measured on this machine next to llmprune's:
- the whole fp32 model is loaded; layer 0's inputs are caught for every sample (one forward per sample,
  stopped at layer 0), with the keyword arguments the model gives its layers;
- for every decoder layer: a hook on every linear accumulates its own statistic (no sharing between q/k/v
  or gate/up), while each sample goes through the layer alone (batch 1); every linear is pruned from its
  statistic; each sample goes through the pruned layer again (batch 1), giving the next layer's inputs.
- statistics: Wanda's running mean of ||x_j||^2 per input feature; SparseGPT's running average
  H = 2/N sum x x^T, per sample, in fp32, as the reference `add_batch` keeps them.
- the solve: Wanda sorts |W| * sqrt(mean x_j^2) per row and zeroes the smallest half; SparseGPT runs the
  same blocked OBS solve as llmprune (`llmprune.methods.sparsegpt.sparsegpt_prune`, blocksize 128,
  percdamp 0.01), so the comparison is of the drivers around it.

Prints one JSON line: prune seconds (from the first catch to the last layer; model loading, data and
saving excluded, which favours this baseline) and the per-phase split. `-o` saves the pruned model
(save_pretrained) for scoring.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


class _Caught(Exception):
    pass


def catch_layer0_inputs(model, layers: nn.ModuleList, ids: torch.Tensor):
    """Layer 0's hidden states for every sample (n, seqlen, hidden) and the keyword arguments given to it."""
    first = layers[0]
    hidden, kwargs = [], {}

    class Catcher(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_type = getattr(first, "attention_type", "full_attention")

        def forward(self, x, *args, **kw):
            hidden.append(x[0])
            kwargs.update(kw)
            raise _Caught

    layers[0] = Catcher()
    for j in range(ids.shape[0]):
        try:
            model(input_ids=ids[j:j + 1], use_cache=False)
        except _Caught:
            pass
    layers[0] = first
    return torch.stack(hidden), kwargs


class WandaStat:
    def __init__(self, cols: int):
        self.scaler_row, self.n = torch.zeros(cols), 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).t().float()  # (cols, tokens)
        tmp = 1
        self.scaler_row *= self.n / (self.n + tmp)
        self.n += tmp
        self.scaler_row += torch.norm(x, p=2, dim=1) ** 2 / self.n

    def prune(self, weight: torch.Tensor, sparsity: float) -> torch.Tensor:
        metric = weight.abs() * torch.sqrt(self.scaler_row.reshape(1, -1))
        order = torch.sort(metric, dim=-1, stable=True)[1][:, :int(weight.shape[1] * sparsity)]
        mask = torch.zeros_like(metric, dtype=torch.bool).scatter_(1, order, True)
        return weight.masked_fill(mask, 0)


class HessianStat:
    def __init__(self, cols: int):
        self.H, self.n = torch.zeros(cols, cols), 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).t().float()  # (cols, tokens)
        tmp = 1
        self.H *= self.n / (self.n + tmp)
        self.n += tmp
        x = (2 / self.n) ** 0.5 * x
        self.H += x.matmul(x.t())

    def prune(self, weight: torch.Tensor, sparsity: float) -> torch.Tensor:
        from llmprune.methods.sparsegpt import sparsegpt_prune

        return sparsegpt_prune(weight, self.H, sparsity)


STATS = {"wanda": WandaStat, "sparsegpt": HessianStat}


@torch.no_grad()
def prune_reference(model, ids: torch.Tensor, method: str, sparsity: float) -> dict:
    phases = {"catch": 0.0, "statistics": 0.0, "solve": 0.0, "rerun": 0.0}
    t = time.perf_counter()
    layers = model.model.layers
    inps, kwargs = catch_layer0_inputs(model, layers, ids)
    outs = torch.zeros_like(inps)
    phases["catch"] = time.perf_counter() - t
    for layer in layers:
        t = time.perf_counter()
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        stats = {n: STATS[method](m.weight.shape[1]) for n, m in subset.items()}
        handles = [m.register_forward_hook(lambda mod, inp, out, s=stats[n]: s.add(inp[0].data))
                   for n, m in subset.items()]
        for j in range(inps.shape[0]):
            outs[j] = layer(inps[j].unsqueeze(0), **kwargs)[0]
        for h in handles:
            h.remove()
        phases["statistics"] += time.perf_counter() - t
        t = time.perf_counter()
        for n, m in subset.items():
            m.weight.data = stats[n].prune(m.weight.data, sparsity)
        del stats
        phases["solve"] += time.perf_counter() - t
        t = time.perf_counter()
        for j in range(inps.shape[0]):
            outs[j] = layer(inps[j].unsqueeze(0), **kwargs)[0]
        inps, outs = outs, inps
        phases["rerun"] += time.perf_counter() - t
    return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--method", choices=sorted(STATS), required=True)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", help="save the pruned model here (save_pretrained)")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmprune.calib import calibration_batch
    from llmprune.data import load_text

    tok = AutoTokenizer.from_pretrained(args.model)
    ids = calibration_batch(tok, load_text(None, "train"), args.samples, args.seqlen, args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    t = time.perf_counter()
    phases = prune_reference(model, ids, args.method, args.sparsity)
    total = time.perf_counter() - t
    if args.output:
        model.save_pretrained(args.output)
        tok.save_pretrained(args.output)
    print(json.dumps({"method": args.method, "prune_s": round(total, 2), "threads": torch.get_num_threads(),
                      "phases_s": {k: round(v, 2) for k, v in phases.items()}}))


if __name__ == "__main__":
    main()
