#!/usr/bin/python3
"""PyTorch CPU reference for scripts/bench/moe-route-distill.bench.mjs.

One moe-route-distill phase-B step at a Mixtral-shaped model with random
weights (4 layers, hidden 512, 8 experts, top 2, vocab 32000), batch 4 x 64:
LoRA r=8 (alpha 16) on every layer's router (block_sparse_moe.gate) and on
the output projection (w2) of experts 0 and 1 of every layer; loss =
next-token cross-entropy + KL(teacher || student) of the next-token
distribution at every position + the mean over layers of KL(teacher ||
student) of the router distributions at every position; backward; AdamW on
the LoRA weights. The teacher's logits and router logits come from one
no-grad forward of the base model on other ids (outside the timed step), as
the tool records the teacher before training.

The MoE block is the sparse form Hugging Face's Mixtral uses (each expert
runs only on the tokens routed to it), not the golden files' dense one, so
both sides do the same arithmetic. Attention, norms and RoPE are
scripts/golden/archs.py's.

Prints one JSON line: {"step_ms", "peak_mb", "threads", "torch"}.
Usage: /usr/bin/python3 moe_distill_torch.py --threads N --iters K
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'golden'))
import archs  # noqa: E402

CFG = dict(model_type='mixtral', hidden_size=512, intermediate_size=1792, num_hidden_layers=4,
           num_attention_heads=8, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
           vocab_size=32000, rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=128,
           tie_word_embeddings=False)
ADAPTED_EXPERTS = (0, 1)


def sparse_moe(m, i, x):
    """Softmax router -> top-k -> renormalise -> each expert on its own tokens."""
    c = m.cfg
    B, T, H = x.shape
    pre = f'model.layers.{i}.block_sparse_moe'
    logits = m.lin(pre + '.gate', x)
    probs = torch.softmax(logits, dim=-1)
    w, idx = torch.topk(probs, c['num_experts_per_tok'], dim=-1)
    w = (w / w.sum(-1, keepdim=True)).reshape(B * T, -1)
    idx = idx.reshape(B * T, -1)
    xf = x.reshape(B * T, H)
    out = torch.zeros_like(xf)
    for e in range(c['num_local_experts']):
        rows, slot = torch.nonzero(idx == e, as_tuple=True)
        if rows.numel() == 0:
            continue
        xe = xf[rows]
        ep = f'{pre}.experts.{e}'
        y = m.lin(ep + '.w2', F.silu(m.lin(ep + '.w1', xe)) * m.lin(ep + '.w3', xe))
        out = out.index_add(0, rows, y * w[rows, slot].unsqueeze(-1))
    return out.reshape(B, T, H), logits


archs.mixtral_moe = sparse_moe  # llama_forward looks the MoE block up by this name


def random_mixtral(c, gen):
    H, V, I, L = c['hidden_size'], c['vocab_size'], c['intermediate_size'], c['num_hidden_layers']
    hd = H // c['num_attention_heads']
    kv = c['num_key_value_heads'] * hd
    r = lambda *s: torch.randn(*s, generator=gen) * 0.02  # noqa: E731
    p = {'model.embed_tokens.weight': r(V, H), 'lm_head.weight': r(V, H), 'model.norm.weight': torch.ones(H)}
    for i in range(L):
        q = f'model.layers.{i}'
        p.update({q + '.input_layernorm.weight': torch.ones(H), q + '.post_attention_layernorm.weight': torch.ones(H),
                  q + '.self_attn.q_proj.weight': r(H, H), q + '.self_attn.k_proj.weight': r(kv, H),
                  q + '.self_attn.v_proj.weight': r(kv, H), q + '.self_attn.o_proj.weight': r(H, H),
                  q + '.block_sparse_moe.gate.weight': r(c['num_local_experts'], H)})
        for e in range(c['num_local_experts']):
            ep = f'{q}.block_sparse_moe.experts.{e}'
            p.update({ep + '.w1.weight': r(I, H), ep + '.w3.weight': r(I, H), ep + '.w2.weight': r(H, I)})
    return archs.Model(c, p)


def kl(teacher_logits, student_logits):
    """Mean over rows of KL(softmax(teacher) || softmax(student))."""
    V = student_logits.shape[-1]
    t = F.log_softmax(teacher_logits.reshape(-1, V), -1)
    s = F.log_softmax(student_logits.reshape(-1, V), -1)
    return F.kl_div(s, t, log_target=True, reduction='batchmean')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    ap.add_argument('--iters', type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    c = CFG
    m = random_mixtral(c, gen)
    H, I, rk, alpha = c['hidden_size'], c['intermediate_size'], 8, 16
    params = []

    def add_lora(name, fin, fout):
        A = (torch.randn(rk, fin, generator=gen) / fin ** 0.5).requires_grad_(True)
        B = torch.zeros(fout, rk).requires_grad_(True)
        m.loras[name] = [archs.Lora(A, B, alpha)]
        params.extend([A, B])

    for i in range(c['num_hidden_layers']):
        pre = f'model.layers.{i}.block_sparse_moe'
        add_lora(pre + '.gate', H, c['num_local_experts'])
        for e in ADAPTED_EXPERTS:
            add_lora(f'{pre}.experts.{e}.w2', I, H)
    B, T = 4, 64
    ids = torch.randint(0, c['vocab_size'], (B, T), generator=gen)
    teacher_ids = torch.randint(0, c['vocab_size'], (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.int64)
    with torch.no_grad():
        t_logits, t_router = archs.forward(m, teacher_ids, mask)  # LoRA B = 0: the base model
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)

    def step():
        logits, router = archs.forward(m, ids, mask)
        loss = archs.next_token_loss(logits, ids, mask) + kl(t_logits, logits)
        L = router.shape[2]
        loss = loss + sum(kl(t_router[:, :, l], router[:, :, l]) for l in range(L)) / L
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up
    ts = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1000)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({'step_ms': statistics.median(ts), 'peak_mb': peak_mb,
                      'threads': torch.get_num_threads(), 'torch': torch.__version__}))


if __name__ == '__main__':
    main()
