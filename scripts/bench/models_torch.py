#!/usr/bin/python3
"""PyTorch CPU reference for scripts/bench/models.bench.mjs.

One shape per run (so peak memory is per shape): GPT-2 architecture with
random weights, LoRA r=8 (alpha 16) on every layer's attention input
projection (attn.c_attn) and MLP output projection (mlp.c_proj); batch 4 x 64.
Measures one training step (forward, next-token cross-entropy, backward,
AdamW on the LoRA weights) and one evaluation forward (no grad). Prints one
JSON line: {"train_ms", "eval_ms", "peak_mb", "threads", "torch"}.

Usage: /usr/bin/python3 models_torch.py --shape tiny|small --threads N --iters K
The model code is scripts/golden/archs.py (the golden-file reference).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'golden'))
import archs  # noqa: E402

SHAPES = {
    'tiny': dict(n_layer=4, n_embd=128, n_head=4, vocab_size=2000, n_positions=128),
    'small': dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
}


def build(shape, gen):
    c = dict(SHAPES[shape], model_type='gpt2', layer_norm_epsilon=1e-5)
    H, L = c['n_embd'], c['n_layer']
    m = archs.random_gpt2(c, gen)
    params = []
    r, alpha = 8, 16
    for i in range(L):
        for mod, fin, fout in ((f'transformer.h.{i}.attn.c_attn', H, 3 * H), (f'transformer.h.{i}.mlp.c_proj', 4 * H, H)):
            A = (torch.randn(r, fin, generator=gen) / fin ** 0.5).requires_grad_(True)
            B = torch.zeros(fout, r).requires_grad_(True)
            m.loras[mod] = [archs.Lora(A, B, alpha)]
            params += [A, B]
    return m, params, c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--shape', choices=SHAPES, required=True)
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    ap.add_argument('--iters', type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    m, params, c = build(a.shape, gen)
    B, T = 4, 64
    ids = torch.randint(0, c['vocab_size'], (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.int64)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)

    def train_step():
        logits, _ = archs.forward(m, ids, mask)
        loss = archs.next_token_loss(logits, ids, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    def eval_step():
        with torch.no_grad():
            logits, _ = archs.forward(m, ids, mask)
        return float(logits[0, 0, 0])

    def timed(fn):
        fn()  # warm-up
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1000)
        return statistics.median(ts)

    train_ms = timed(train_step)
    eval_ms = timed(eval_step)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({'train_ms': train_ms, 'eval_ms': eval_ms, 'peak_mb': peak_mb,
                      'threads': torch.get_num_threads(), 'torch': torch.__version__}))


if __name__ == '__main__':
    main()
