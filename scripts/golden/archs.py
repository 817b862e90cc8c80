"""Reference implementations of GPT-2, Llama-family (llama/qwen2/mistral) and
Mixtral in plain PyTorch, written from the published architecture definitions
(the GPT-2 paper/code with Conv1D weights, the Llama and Mixtral papers and
the Hugging Face parameter layout). Used by make_golden.py to produce golden
files and by scripts/bench/models_torch.py as the speed reference.

Named sites (identical definitions in tools/core/src/models):
  embed                  residual stream entering layer 0, [B,T,H]
                         (gpt2: wte[ids] + wpe[pos]; llama/mixtral: embed_tokens[ids])
  layers.{i}.attn        attention block output after the output projection,
                         before it is added to the residual stream, [B,T,H]
  layers.{i}.mlp         MLP block output (for Mixtral the whole sparse-MoE
                         block output) before it is added to the residual, [B,T,H]
  layers.{i}.resid_post  residual stream after layer i, [B,T,H]
  layers.{i}.router      router logits (gate output, before softmax), [B,T,E]
  layers.{i}.experts.{e} expert e's weighted contribution to the MoE output:
                         routing_weight(token, e) * expert_e(x), zero for tokens
                         not routed to e, [B,T,H]; sum over e equals layers.{i}.mlp
"""
import math
import torch
import torch.nn.functional as F


class Lora:
    """PEFT LoRA: y = base(x) + scale * (alpha/r) * x A^T B^T, A [r,in], B [out,r]."""

    def __init__(self, A, B, alpha, scale=1.0):
        self.A = A
        self.B = B
        self.alpha = alpha
        self.scale = scale

    def delta(self, x):
        r = self.A.shape[0]
        return (x @ self.A.t() @ self.B.t()) * (self.alpha / r * self.scale)


class Model:
    """Holds float32 parameters by HF name, LoRA adapters by module name and
    the hook callback. `sites` collects every site's tensor on forward."""

    def __init__(self, cfg, params):
        self.cfg = cfg
        self.p = params
        self.loras = {}
        self.sites = {}
        self.retain = False

    def site(self, name, x):
        if self.retain and x.requires_grad:
            x.retain_grad()
        self.sites[name] = x
        return x

    def lin(self, name, x, conv1d=False):
        w = self.p[name + '.weight']
        b = self.p.get(name + '.bias')
        # Conv1D stores weight as [in, out]; nn.Linear as [out, in]
        y = x @ w if conv1d else x @ w.t()
        if b is not None:
            y = y + b
        for lo in self.loras.get(name, []):
            y = y + lo.delta(x)
        return y


def causal_pad_mask(attn_mask, T):
    """[B,1,T,T] boolean: query t may see key s when s <= t and key s is not padding."""
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    keep = attn_mask.bool()[:, None, None, :]
    return causal[None, None] & keep


def sdpa(q, k, v, mask, scale):
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float('-inf'))
    return torch.softmax(s, dim=-1) @ v


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gpt2_forward(m, ids, attn_mask):
    c = m.cfg
    p = m.p
    B, T = ids.shape
    H = c['n_embd']
    nh = c['n_head']
    hd = H // nh
    eps = c.get('layer_norm_epsilon', 1e-5)
    pos = torch.arange(T)[None, :].expand(B, T)
    h = p['transformer.wte.weight'][ids] + p['transformer.wpe.weight'][pos]
    h = m.site('embed', h)
    mask = causal_pad_mask(attn_mask, T)
    for i in range(c['n_layer']):
        pre = f'transformer.h.{i}'
        x = F.layer_norm(h, (H,), p[pre + '.ln_1.weight'], p[pre + '.ln_1.bias'], eps)
        qkv = m.lin(pre + '.attn.c_attn', x, conv1d=True)
        q, k, v = qkv.split(H, dim=-1)
        q, k, v = [t.view(B, T, nh, hd).transpose(1, 2) for t in (q, k, v)]
        o = sdpa(q, k, v, mask, 1.0 / math.sqrt(hd)).transpose(1, 2).reshape(B, T, H)
        a = m.site(f'layers.{i}.attn', m.lin(pre + '.attn.c_proj', o, conv1d=True))
        h = h + a
        x = F.layer_norm(h, (H,), p[pre + '.ln_2.weight'], p[pre + '.ln_2.bias'], eps)
        f = gelu_new(m.lin(pre + '.mlp.c_fc', x, conv1d=True))
        mo = m.site(f'layers.{i}.mlp', m.lin(pre + '.mlp.c_proj', f, conv1d=True))
        h = m.site(f'layers.{i}.resid_post', h + mo)
    h = F.layer_norm(h, (H,), p['transformer.ln_f.weight'], p['transformer.ln_f.bias'], eps)
    return h @ p['transformer.wte.weight'].t(), None


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def llama3_inv_freq(inv, rs):
    """Llama 3.1 rope_scaling (rope_type "llama3"): long wavelengths are divided by
    `factor`, short ones kept, the band between interpolated smoothly."""
    factor = rs['factor']
    lo, hi = rs['low_freq_factor'], rs['high_freq_factor']
    old = rs['original_max_position_embeddings']
    lo_wav, hi_wav = old / lo, old / hi
    wav = 2 * math.pi / inv
    out = torch.where(wav > lo_wav, inv / factor, inv)
    smooth = (old / wav - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wav < hi_wav) & ~(wav > lo_wav)
    return torch.where(medium, smoothed, out)


def rope(x, pos, theta, scaling=None):
    """HF convention: rotate_half over the two halves of the head dimension."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    if scaling is not None:
        inv = llama3_inv_freq(inv, scaling)
    fr = pos[:, :, None].float() * inv[None, None, :]  # [B,T,d/2]
    emb = torch.cat((fr, fr), dim=-1)[:, None]  # [B,1,T,d]
    return x * emb.cos() + rotate_half(x) * emb.sin()


def llama_attn(m, pre, x, pos, mask):
    c = m.cfg
    B, T, H = x.shape
    nh = c['num_attention_heads']
    nkv = c.get('num_key_value_heads', nh)
    hd = c.get('head_dim', H // nh)
    q = m.lin(pre + '.q_proj', x).view(B, T, nh, hd).transpose(1, 2)
    k = m.lin(pre + '.k_proj', x).view(B, T, nkv, hd).transpose(1, 2)
    v = m.lin(pre + '.v_proj', x).view(B, T, nkv, hd).transpose(1, 2)
    theta = c.get('rope_theta', 10000.0)
    rs = c.get('rope_scaling')
    q = rope(q, pos, theta, rs)
    k = rope(k, pos, theta, rs)
    rep = nh // nkv
    k = k.repeat_interleave(rep, dim=1)  # GQA: head j uses kv head j // rep
    v = v.repeat_interleave(rep, dim=1)
    o = sdpa(q, k, v, mask, 1.0 / math.sqrt(hd)).transpose(1, 2).reshape(B, T, nh * hd)
    return m.lin(pre + '.o_proj', o)


def mixtral_moe(m, i, x):
    c = m.cfg
    B, T, H = x.shape
    pre = f'model.layers.{i}.block_sparse_moe'
    E = c['num_local_experts']
    k = c['num_experts_per_tok']
    logits = m.site(f'layers.{i}.router', m.lin(pre + '.gate', x))
    probs = torch.softmax(logits, dim=-1)
    w, idx = torch.topk(probs, k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(E):
        # routing weight of expert e per token (0 where e is not in the top k)
        we = (w * (idx == e).to(w.dtype)).sum(-1, keepdim=True)
        ep = f'{pre}.experts.{e}'
        y = m.lin(ep + '.w2', F.silu(m.lin(ep + '.w1', x)) * m.lin(ep + '.w3', x))
        contrib = m.site(f'layers.{i}.experts.{e}', y * we)
        out = out + contrib
    return out, logits


def llama_forward(m, ids, attn_mask, moe=False):
    c = m.cfg
    p = m.p
    B, T = ids.shape
    eps = c.get('rms_norm_eps', 1e-6)
    pos = torch.arange(T)[None, :].expand(B, T)
    h = m.site('embed', p['model.embed_tokens.weight'][ids])
    mask = causal_pad_mask(attn_mask, T)
    routers = []
    for i in range(c['num_hidden_layers']):
        pre = f'model.layers.{i}'
        x = rms_norm(h, p[pre + '.input_layernorm.weight'], eps)
        a = m.site(f'layers.{i}.attn', llama_attn(m, pre + '.self_attn', x, pos, mask))
        h = h + a
        x = rms_norm(h, p[pre + '.post_attention_layernorm.weight'], eps)
        if moe:
            mo, rl = mixtral_moe(m, i, x)
            routers.append(rl)
        else:
            mp = pre + '.mlp'
            mo = m.lin(mp + '.down_proj', F.silu(m.lin(mp + '.gate_proj', x)) * m.lin(mp + '.up_proj', x))
        mo = m.site(f'layers.{i}.mlp', mo)
        h = m.site(f'layers.{i}.resid_post', h + mo)
    h = rms_norm(h, p['model.norm.weight'], eps)
    head = p['model.embed_tokens.weight'] if c.get('tie_word_embeddings') else p['lm_head.weight']
    return h @ head.t(), (torch.stack(routers, dim=2) if moe else None)


def forward(m, ids, attn_mask):
    t = m.cfg['model_type']
    if t == 'gpt2':
        return gpt2_forward(m, ids, attn_mask)
    if t in ('llama', 'qwen2', 'mistral'):
        return llama_forward(m, ids, attn_mask)
    if t == 'mixtral':
        return llama_forward(m, ids, attn_mask, moe=True)
    raise ValueError(t)


def next_token_loss(logits, ids, attn_mask):
    """Mean cross-entropy of predicting token t+1 from position t, over real tokens."""
    V = logits.shape[-1]
    tgt = ids[:, 1:].clone()
    tgt[attn_mask[:, 1:] == 0] = -100
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), tgt.reshape(-1), ignore_index=-100)


def random_gpt2(c, gen):
    """A GPT-2 Model of config c with random weights (N(0, 0.02) matrices, unit
    norms, zero biases) for the benchmarks' PyTorch side."""
    H, V, P, L = c['n_embd'], c['vocab_size'], c['n_positions'], c['n_layer']
    p = {'transformer.wte.weight': torch.randn(V, H, generator=gen) * 0.02,
         'transformer.wpe.weight': torch.randn(P, H, generator=gen) * 0.02,
         'transformer.ln_f.weight': torch.ones(H), 'transformer.ln_f.bias': torch.zeros(H)}
    for i in range(L):
        q = f'transformer.h.{i}'
        p.update({q + '.ln_1.weight': torch.ones(H), q + '.ln_1.bias': torch.zeros(H),
                  q + '.ln_2.weight': torch.ones(H), q + '.ln_2.bias': torch.zeros(H),
                  q + '.attn.c_attn.weight': torch.randn(H, 3 * H, generator=gen) * 0.02,
                  q + '.attn.c_attn.bias': torch.zeros(3 * H),
                  q + '.attn.c_proj.weight': torch.randn(H, H, generator=gen) * 0.02,
                  q + '.attn.c_proj.bias': torch.zeros(H),
                  q + '.mlp.c_fc.weight': torch.randn(H, 4 * H, generator=gen) * 0.02,
                  q + '.mlp.c_fc.bias': torch.zeros(4 * H),
                  q + '.mlp.c_proj.weight': torch.randn(4 * H, H, generator=gen) * 0.02,
                  q + '.mlp.c_proj.bias': torch.zeros(H)})
    return Model(c, p)
