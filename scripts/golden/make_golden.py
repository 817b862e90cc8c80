#!/usr/bin/python3
"""Build tiny random Hugging Face model directories and golden outputs.

Run with Debian's torch:  /usr/bin/python3 scripts/golden/make_golden.py
Writes fixtures/golden/<name>/ with config.json, tokenizer.json,
tokenizer_config.json, weights (single file or sharded with an index), an
adapter/ in PEFT format, and golden.safetensors + golden.json.

The safetensors reader/writer here is written independently of the
TypeScript one (struct + json), so each checks the other.
"""
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archs  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
OUT = os.path.join(ROOT, 'fixtures', 'golden')

DT = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16'}
DT_INV = {v: k for k, v in DT.items()}


def st_write(path, tensors, metadata=None):
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        # raw bytes through an int view (numpy has no bfloat16)
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype in (torch.float16, torch.bfloat16) else t.numpy().tobytes()
        header[name] = {'dtype': DT[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header['__metadata__'] = metadata
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def st_read(path):
    with open(path, 'rb') as f:
        buf = f.read()
    n = struct.unpack('<Q', buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        raw = bytearray(buf[8 + n + a:8 + n + b])
        dt = DT_INV[info['dtype']]
        if dt == torch.float32:
            t = torch.frombuffer(raw, dtype=torch.float32)
        else:
            t = torch.frombuffer(raw, dtype=torch.int16).view(dt)
        out[name] = t.reshape(info['shape']).clone()
    return out


# ---------------------------------------------------------------- tokenizer
CORPUS = """the capital of france is paris . the capital of italy is rome .
the capital of spain is madrid . paris is a city in france . rome is a city in italy .
the eiffel tower is in paris . the colosseum is in rome . the language of france is french .
the language of italy is italian . the language of spain is spanish ."""

SPECIALS = ['<pad>', '<unk>', '<eos>']


def build_tokenizer(vocab_size):
    """A BPE tokenizer with a Metaspace pre-tokenizer, trained here on CORPUS
    by repeatedly merging the most frequent pair (ties by first occurrence)."""
    words = ['\u2581' + w for w in CORPUS.split()]
    alphabet = sorted(set(''.join(words)))
    vocab = SPECIALS + alphabet
    seqs = [list(w) for w in words]
    merges = []
    while len(vocab) < vocab_size:
        counts = {}
        for s in seqs:
            for a, b in zip(s, s[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = max(counts.items(), key=lambda kv: kv[1])[0]
        merges.append(best)
        tok = best[0] + best[1]
        vocab.append(tok)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if s[i] == best[0] and s[i + 1] == best[1]:
                    s[i:i + 2] = [tok]
                else:
                    i += 1
    meta = {'type': 'Metaspace', 'replacement': '\u2581', 'prepend_scheme': 'always', 'split': True}
    tok = {
        'version': '1.0',
        'truncation': None,
        'padding': None,
        'added_tokens': [
            {'id': i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False,
             'normalized': False, 'special': True} for i, s in enumerate(SPECIALS)
        ],
        'normalizer': None,
        'pre_tokenizer': meta,
        'post_processor': None,
        'decoder': meta,
        'model': {
            'type': 'BPE', 'dropout': None, 'unk_token': '<unk>', 'continuing_subword_prefix': None,
            'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
            'vocab': {t: i for i, t in enumerate(vocab)},
            'merges': [a + ' ' + b for a, b in merges],
        },
    }
    cfg = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': None, 'eos_token': '<eos>',
           'pad_token': '<pad>', 'unk_token': '<unk>', 'model_max_length': 64}
    return tok, cfg, len(vocab)


# ---------------------------------------------------------------- checkpoints
def gpt2_shapes(c):
    H, V, P = c['n_embd'], c['vocab_size'], c['n_positions']
    s = {'transformer.wte.weight': [V, H], 'transformer.wpe.weight': [P, H],
         'transformer.ln_f.weight': [H], 'transformer.ln_f.bias': [H]}
    for i in range(c['n_layer']):
        p = f'transformer.h.{i}'
        s.update({p + '.ln_1.weight': [H], p + '.ln_1.bias': [H], p + '.ln_2.weight': [H], p + '.ln_2.bias': [H],
                  p + '.attn.c_attn.weight': [H, 3 * H], p + '.attn.c_attn.bias': [3 * H],
                  p + '.attn.c_proj.weight': [H, H], p + '.attn.c_proj.bias': [H],
                  p + '.mlp.c_fc.weight': [H, 4 * H], p + '.mlp.c_fc.bias': [4 * H],
                  p + '.mlp.c_proj.weight': [4 * H, H], p + '.mlp.c_proj.bias': [H]})
    return s


def llama_shapes(c, moe=False):
    H, V, I = c['hidden_size'], c['vocab_size'], c['intermediate_size']
    nh = c['num_attention_heads']
    nkv = c.get('num_key_value_heads', nh)
    hd = c.get('head_dim', H // nh)
    qkv_bias = c['model_type'] == 'qwen2' or c.get('attention_bias', False)
    s = {'model.embed_tokens.weight': [V, H], 'model.norm.weight': [H]}
    if not c.get('tie_word_embeddings'):
        s['lm_head.weight'] = [V, H]
    for i in range(c['num_hidden_layers']):
        p = f'model.layers.{i}'
        s.update({p + '.input_layernorm.weight': [H], p + '.post_attention_layernorm.weight': [H],
                  p + '.self_attn.q_proj.weight': [nh * hd, H], p + '.self_attn.k_proj.weight': [nkv * hd, H],
                  p + '.self_attn.v_proj.weight': [nkv * hd, H], p + '.self_attn.o_proj.weight': [H, nh * hd]})
        if qkv_bias:
            s.update({p + '.self_attn.q_proj.bias': [nh * hd], p + '.self_attn.k_proj.bias': [nkv * hd],
                      p + '.self_attn.v_proj.bias': [nkv * hd]})
        if moe:
            E = c['num_local_experts']
            s[p + '.block_sparse_moe.gate.weight'] = [E, H]
            for e in range(E):
                q = f'{p}.block_sparse_moe.experts.{e}'
                s.update({q + '.w1.weight': [I, H], q + '.w3.weight': [I, H], q + '.w2.weight': [H, I]})
        else:
            s.update({p + '.mlp.gate_proj.weight': [I, H], p + '.mlp.up_proj.weight': [I, H],
                      p + '.mlp.down_proj.weight': [H, I]})
    return s


def init_params(shapes, gen):
    out = {}
    for name, shp in shapes.items():
        if name.endswith('norm.weight') or '.ln_' in name and name.endswith('.weight'):
            t = 1.0 + 0.1 * torch.randn(shp, generator=gen)
        elif name.endswith('.bias') or name.endswith('ln_f.bias'):
            t = 0.05 * torch.randn(shp, generator=gen)
        else:
            t = 0.15 * torch.randn(shp, generator=gen)
        out[name] = t.float()
    if 'transformer.ln_f.weight' in shapes:
        out['transformer.ln_f.weight'] = 1.0 + 0.1 * torch.randn(shapes['transformer.ln_f.weight'], generator=gen)
    return out


def save_checkpoint(d, params, dtype, shards):
    """Save params (cast to dtype) as model.safetensors or as `shards` files + index.
    Returns the float32 parameters as they will be read back (after rounding)."""
    cast = {k: v.to(dtype) for k, v in params.items()}
    for f in os.listdir(d):
        if f.endswith('.safetensors') or f.endswith('.index.json'):
            os.remove(os.path.join(d, f))
    if shards == 1:
        st_write(os.path.join(d, 'model.safetensors'), cast, {'format': 'pt'})
        files = ['model.safetensors']
    else:
        names = sorted(cast)
        per = (len(names) + shards - 1) // shards
        wmap = {}
        files = []
        total = 0
        for s in range(shards):
            fn = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
            part = {n: cast[n] for n in names[s * per:(s + 1) * per]}
            st_write(os.path.join(d, fn), part, {'format': 'pt'})
            files.append(fn)
            for n, t in part.items():
                wmap[n] = fn
                total += t.numel() * t.element_size()
        with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as f:
            json.dump({'metadata': {'total_size': total}, 'weight_map': wmap}, f, indent=2, sort_keys=True)
    back = {}
    for fn in files:
        back.update(st_read(os.path.join(d, fn)))
    return {k: v.float() for k, v in back.items()}


ARCHS = [
    # name, config, dtype, shards, lora targets
    ('gpt2', {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'], 'n_embd': 32, 'n_layer': 2, 'n_head': 4,
              'n_positions': 32, 'n_ctx': 32, 'layer_norm_epsilon': 1e-5, 'activation_function': 'gelu_new',
              'tie_word_embeddings': True},
     torch.float32, 1, ['transformer.h.1.attn.c_attn', 'transformer.h.0.mlp.c_proj']),
    ('llama', {'model_type': 'llama', 'architectures': ['LlamaForCausalLM'], 'hidden_size': 32,
               'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2,
               'rope_theta': 10000.0, 'rms_norm_eps': 1e-6, 'max_position_embeddings': 64,
               'hidden_act': 'silu', 'tie_word_embeddings': False, 'attention_bias': False},
     torch.bfloat16, 1, ['model.layers.1.self_attn.q_proj', 'model.layers.0.mlp.down_proj']),
    ('qwen2', {'model_type': 'qwen2', 'architectures': ['Qwen2ForCausalLM'], 'hidden_size': 32,
               'intermediate_size': 48, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 1,
               'rope_theta': 1000000.0, 'rms_norm_eps': 1e-6, 'max_position_embeddings': 64,
               'hidden_act': 'silu', 'tie_word_embeddings': True},
     torch.float32, 2, ['model.layers.0.self_attn.v_proj', 'model.layers.1.mlp.up_proj']),
    ('mixtral', {'model_type': 'mixtral', 'architectures': ['MixtralForCausalLM'], 'hidden_size': 32,
                 'intermediate_size': 48, 'num_hidden_layers': 2, 'num_attention_heads': 4,
                 'num_key_value_heads': 2, 'rope_theta': 1000000.0, 'rms_norm_eps': 1e-5,
                 'max_position_embeddings': 64, 'hidden_act': 'silu', 'tie_word_embeddings': False,
                 'num_local_experts': 4, 'num_experts_per_tok': 2},
     torch.float16, 3, ['model.layers.1.block_sparse_moe.experts.2.w1', 'model.layers.0.self_attn.o_proj']),
    ('llama3', {'model_type': 'llama', 'architectures': ['LlamaForCausalLM'], 'hidden_size': 32,
                'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 1,
                'head_dim': 16, 'rope_theta': 10000.0, 'rms_norm_eps': 1e-5, 'max_position_embeddings': 512,
                'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                 'high_freq_factor': 4.0, 'original_max_position_embeddings': 64},
                'hidden_act': 'silu', 'tie_word_embeddings': True, 'attention_bias': False},
     torch.float32, 1, ['model.layers.0.self_attn.k_proj', 'model.layers.1.mlp.gate_proj']),
]

LORA_R = 4
LORA_ALPHA = 8


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    tok, tok_cfg, V = build_tokenizer(96)
    # a right-padded batch of 2: lengths 9 and 6 (pad id 0)
    ids = torch.randint(3, V, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    for name, cfg, dtype, shards, targets in ARCHS:
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        cfg = dict(cfg, vocab_size=V, torch_dtype={torch.float32: 'float32', torch.float16: 'float16',
                                                   torch.bfloat16: 'bfloat16'}[dtype],
                   eos_token_id=2, pad_token_id=0)
        with open(os.path.join(d, 'config.json'), 'w') as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        with open(os.path.join(d, 'tokenizer.json'), 'w') as f:
            json.dump(tok, f, indent=1, ensure_ascii=False)
        with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
            json.dump(tok_cfg, f, indent=2)
        shapes = gpt2_shapes(cfg) if name == 'gpt2' else llama_shapes(cfg, moe=(name == 'mixtral'))
        params = save_checkpoint(d, init_params(shapes, gen), dtype, shards)

        m = archs.Model(cfg, params)
        with torch.no_grad():
            logits, routers = archs.forward(m, ids, mask)
        gold = {'logits': logits.contiguous()}
        for k, v in m.sites.items():
            gold['site.' + k] = v.detach().contiguous()
        if routers is not None:
            gold['router_logits'] = routers.contiguous()  # [B,T,L,E]

        # greedy continuations, recomputing the whole sequence each step (no cache)
        greedy = []
        for prompt in (ids[0, :4].tolist(), ids[1, :3].tolist()):
            seq = list(prompt)
            with torch.no_grad():
                for _ in range(6):
                    x = torch.tensor([seq])
                    lg, _ = archs.forward(m, x, torch.ones_like(x))
                    seq.append(int(lg[0, -1].argmax()))
            greedy.append({'prompt': prompt, 'new_tokens': seq[len(prompt):]})

        # LoRA on two modules; loss = next-token CE; grads of A and B and of one site
        adapter = {}
        for t in targets:
            w = params[t + '.weight']
            conv = name == 'gpt2'
            fin, fout = (w.shape[0], w.shape[1]) if conv else (w.shape[1], w.shape[0])
            A = (0.2 * torch.randn(LORA_R, fin, generator=gen)).requires_grad_(True)
            B = (0.2 * torch.randn(fout, LORA_R, generator=gen)).requires_grad_(True)
            m.loras[t] = [archs.Lora(A, B, LORA_ALPHA)]
            adapter[t] = (A, B)
        m.sites = {}
        m.retain = True
        # make the embedding site a leaf-derived tensor that keeps its grad
        logits_l, _ = archs.forward(m, ids, mask)
        loss = archs.next_token_loss(logits_l, ids, mask)
        loss.backward()
        gold['lora.logits'] = logits_l.detach().contiguous()
        for t, (A, B) in adapter.items():
            gold[f'lora.grad.{t}.lora_A'] = A.grad.contiguous()
            gold[f'lora.grad.{t}.lora_B'] = B.grad.contiguous()
        gold['lora.grad.site.layers.0.mlp'] = m.sites['layers.0.mlp'].grad.contiguous()
        st_write(os.path.join(d, 'golden.safetensors'), gold)

        ad = os.path.join(d, 'adapter')
        os.makedirs(ad, exist_ok=True)
        st_write(os.path.join(ad, 'adapter_model.safetensors'),
                 {f'base_model.model.{t}.{ab}.weight': (A if ab == 'lora_A' else B).detach()
                  for t, (A, B) in adapter.items() for ab in ('lora_A', 'lora_B')})
        with open(os.path.join(ad, 'adapter_config.json'), 'w') as f:
            json.dump({'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': LORA_R, 'lora_alpha': LORA_ALPHA,
                       'lora_dropout': 0.0, 'bias': 'none', 'target_modules': targets,
                       'fan_in_fan_out': name == 'gpt2', 'base_model_name_or_path': name}, f, indent=2)
        with open(os.path.join(d, 'golden.json'), 'w') as f:
            json.dump({'input_ids': ids.tolist(), 'attention_mask': mask.tolist(), 'lora_targets': targets,
                       'lora_r': LORA_R, 'lora_alpha': LORA_ALPHA, 'lora_loss': loss.item(), 'greedy': greedy,
                       'torch_version': torch.__version__}, f, indent=2)
        print(name, 'loss', round(loss.item(), 5), 'tensors', len(gold))


if __name__ == '__main__':
    main()
