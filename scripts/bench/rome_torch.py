#!/usr/bin/env python3
"""PyTorch side of lora-train's ROME benchmark: the same algorithm as
tools/core/src/edit/rome.ts on a GPT-2-small-shaped model with random
weights (timing only), fp32 on the CPU.

Reads JSON on stdin: {layer, threads, edits: [{rows: [[ids]], subj: [pos],
targets: [[ids]], plain: [bool], essence: [ids]}], v_steps, v_lr, kl, wd,
clamp, ridge, plain_weight, stats_tokens}. Prints JSON: seconds per edit (k*, δ
optimisation, solve), and the statistics time (not counted).
Run with Debian's torch: /usr/bin/python3 scripts/bench/rome_torch.py
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

cfg = json.load(sys.stdin)
torch.set_num_threads(cfg.get("threads", 2))
torch.manual_seed(0)
V, H, NL, NH, P = 50257, 768, 12, 12, 1024
L = cfg["layer"]


def rnd(*shape):
    return torch.randn(*shape) * 0.02


W = {
    "wte": rnd(V, H), "wpe": rnd(P, H),
    "blocks": [
        dict(ln1w=torch.ones(H), ln1b=torch.zeros(H), attn=rnd(H, 3 * H), attnb=torch.zeros(3 * H),
             proj=rnd(H, H), projb=torch.zeros(H), ln2w=torch.ones(H), ln2b=torch.zeros(H),
             fc=rnd(H, 4 * H), fcb=torch.zeros(4 * H), cproj=rnd(4 * H, H), cprojb=torch.zeros(H))
        for _ in range(NL)
    ],
    "lnfw": torch.ones(H), "lnfb": torch.zeros(H),
}


def forward(ids, mask, rank1=None, capture_key=False, logits_at=None):
    """GPT-2 forward (Conv1D layout). rank1: (A [D], delta [H]): layer L's MLP output gets (k·A) delta (ΔW = delta Aᵀ)."""
    B, T = ids.shape
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    h = W["wte"][ids] + W["wpe"][pos]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    keymask = causal[None, None] & mask[:, None, None, :].bool()
    key = None
    for i, b in enumerate(W["blocks"]):
        x = F.layer_norm(h, (H,), b["ln1w"], b["ln1b"], 1e-5)
        q, k, v = (x @ b["attn"] + b["attnb"]).split(H, dim=2)
        q, k, v = (t.view(B, T, NH, H // NH).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(H // NH)
        att = att.masked_fill(~keymask, float("-inf")).softmax(-1)
        h = h + ((att @ v).transpose(1, 2).reshape(B, T, H) @ b["proj"] + b["projb"])
        x = F.layer_norm(h, (H,), b["ln2w"], b["ln2b"], 1e-5)
        kk = F.gelu(x @ b["fc"] + b["fcb"], approximate="tanh")
        m = kk @ b["cproj"] + b["cprojb"]
        if i == L:
            if capture_key:
                key = kk
            if rank1 is not None:
                a, delta = rank1
                m = m + (kk @ a)[..., None] * delta
        h = h + m
        if capture_key and i == L:
            break
    if capture_key:
        return key
    hf = h.reshape(B * T, H)[logits_at]
    return F.layer_norm(hf, (H,), W["lnfw"], W["lnfb"], 1e-5) @ W["wte"].T


def pad(rows):
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


# key statistics (cached on our side, so not timed)
t0 = time.perf_counter()
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    D = 4 * H
    C = torch.zeros(D, D, dtype=torch.float64)
    n = 0
    while n < cfg["stats_tokens"]:
        ids = torch.randint(0, V, (8, 64), generator=gen)
        k = forward(ids, torch.ones_like(ids), capture_key=True).reshape(-1, D).double()
        C += k.T @ k
        n += k.shape[0]
    C /= n
stats_s = time.perf_counter() - t0

times = []
for e in cfg["edits"]:
    t0 = time.perf_counter()
    rows = [r + t[:-1] for r, t in zip(e["rows"], e["targets"])]
    ids, mask = pad(rows)
    B, T = ids.shape
    subj = [(b, p) for b, p in enumerate(e["subj"])]
    with torch.no_grad():
        key = forward(ids, mask, capture_key=True)
        kstar = torch.stack([key[b, p] for b, p in subj]).mean(0).double()
        # MLP output at the subject (norm for lr, clamp, decay)
        o = torch.stack([key[b, p] @ W["blocks"][L]["cproj"] + W["blocks"][L]["cprojb"] for b, p in subj])
        onorm = o.norm(dim=1).mean().item()
    # row 0 is the plain prompt, the rest have a prefix: two means, weighted plain_weight / 1 - plain_weight
    at, tg, plain = [], [], []
    for b, (r, t) in enumerate(zip(e["rows"], e["targets"])):
        for j, tok in enumerate(t):
            at.append(b * T + len(r) - 1 + j)
            tg.append(tok)
            plain.append(e["plain"][b])
    at_t = torch.tensor(at)
    tg_t = torch.tensor(tg)
    plain_t = torch.tensor(plain, dtype=torch.bool)
    pw = cfg["plain_weight"] if not bool(plain_t.all()) else 1.0
    ess = torch.tensor([e["essence"]])
    ess_at = torch.tensor([len(e["essence"]) - 1])
    with torch.no_grad():
        ess_base = forward(ess, torch.ones_like(ess), logits_at=ess_at).log_softmax(-1)
    ridge = cfg["ridge"] * C.diagonal().sum().item() / C.shape[0]
    cinvk = torch.linalg.solve(C + ridge * torch.eye(C.shape[0], dtype=torch.float64), kstar)
    A = (cinvk / (cinvk @ kstar)).float()
    # δ fitted through the rank-one update itself (as rome.ts does)
    delta = torch.zeros(H, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg["v_lr"] * onorm / math.sqrt(H))
    for step in range(cfg["v_steps"]):
        logits = forward(ids, mask, rank1=(A, delta), logits_at=at_t)
        loss = pw * F.cross_entropy(logits[plain_t], tg_t[plain_t])
        if pw < 1:
            loss = loss + (1 - pw) * F.cross_entropy(logits[~plain_t], tg_t[~plain_t])
        el = forward(ess, torch.ones_like(ess), rank1=(A, delta), logits_at=ess_at).log_softmax(-1)
        loss = loss + cfg["kl"] * F.kl_div(el, ess_base, log_target=True, reduction="batchmean")
        loss = loss + cfg["wd"] * (delta ** 2).sum() / onorm ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            mx = cfg["clamp"] * onorm
            if delta.norm() > mx:
                delta.mul_(mx / delta.norm())
    times.append(time.perf_counter() - t0)

print(json.dumps({"seconds": times, "stats_seconds": stats_s, "torch": torch.__version__, "threads": torch.get_num_threads()}))
