/**
 * GPT-2: LayerNorm, learned positions, fused q/k/v (`c_attn`), gelu_new MLP
 * (`c_fc` → `c_proj`), Conv1D weights stored [in, out]. Canonical names
 * carry the `transformer.` prefix; checkpoints saved from GPT2Model omit it.
 */
import type { ModelConfig } from '../config.js';
import { ModelLoadError, defineArch, int, withoutType, type ArchDescription, num, type Json, type LayerModules } from './common.js';

const P = 'transformer.';

function layer(i: number): LayerModules {
  const p = `${P}h.${i}`;
  return {
    attnNorm: `${p}.ln_1`,
    mlpNorm: `${p}.ln_2`,
    qkv: { fused: `${p}.attn.c_attn` },
    attnOut: `${p}.attn.c_proj`,
    mlp: { in: [`${p}.mlp.c_fc`], out: `${p}.mlp.c_proj` },
    moe: null,
  };
}

export const gpt2: ArchDescription<'gpt2'> = defineArch({
  family: 'gpt2',
  modelTypes: ['gpt2'],
  tokenEmbedding: `${P}wte`,
  positionEmbedding: `${P}wpe`,
  finalNorm: `${P}ln_f`,
  normKind: 'layernorm',
  fanInFanOut: true,

  layer,

  mlpKeys: (ops, mlp, x) => ops.lin(mlp.in[0], x, 'gelu'),

  canonical: (name) => (name.startsWith(P) || name.startsWith('lm_head') ? name : P + name),
  checkpointNames: (name) => (name.startsWith(P) ? [name, name.slice(P.length)] : [name]),

  parseConfig(cfg: Json, file, common): ModelConfig {
    const hidden = int(cfg, file, 'n_embd', 'hidden_size');
    const heads = int(cfg, file, 'n_head', 'num_attention_heads');
    if (hidden % heads !== 0) throw new ModelLoadError(`${file}: n_embd ${hidden} is not divisible by n_head ${heads}`);
    if (cfg.scale_attn_by_inverse_layer_idx === true || cfg.reorder_and_upcast_attn === true || cfg.scale_attn_weights === false) {
      throw new ModelLoadError(`${file}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn / scale_attn_weights=false are not supported`);
    }
    const act = cfg.activation_function ?? 'gelu_new';
    if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') {
      throw new ModelLoadError(`${file}: activation_function "${String(act)}" is not supported (gelu_new only)`);
    }
    return {
      modelType: common.modelType, // first, as config.json's model_type
      family: 'gpt2',
      ...withoutType(common),
      hidden,
      layers: int(cfg, file, 'n_layer', 'num_hidden_layers'),
      heads,
      kvHeads: heads,
      headDim: hidden / heads,
      intermediate: typeof cfg.n_inner === 'number' ? int(cfg, file, 'n_inner') : 4 * hidden,
      normEps: num(cfg, 'layer_norm_epsilon', 1e-5, file),
      maxPositions: int(cfg, file, 'n_positions', 'n_ctx'),
      ropeTheta: 0,
      ropeScaling: null,
      tieEmbeddings: cfg.tie_word_embeddings !== false,
      qkvBias: true,
      oBias: true,
      mlpBias: true,
      experts: 0,
      expertsPerTok: 0,
      slidingWindow: null,
    };
  },

  expectedWeights(c) {
    const s = new Map<string, number[]>();
    const H = c.hidden;
    s.set(`${P}wte.weight`, [c.vocabSize, H]);
    s.set(`${P}wpe.weight`, [c.maxPositions, H]);
    s.set(`${P}ln_f.weight`, [H]);
    s.set(`${P}ln_f.bias`, [H]);
    if (!c.tieEmbeddings) s.set('lm_head.weight', [c.vocabSize, H]);
    for (let i = 0; i < c.layers; i++) {
      const L = layer(i);
      for (const ln of [L.attnNorm, L.mlpNorm]) {
        s.set(`${ln}.weight`, [H]);
        s.set(`${ln}.bias`, [H]);
      }
      // Conv1D: weight [in, out]
      const conv = (m: string, fin: number, fout: number) => {
        s.set(`${m}.weight`, [fin, fout]);
        s.set(`${m}.bias`, [fout]);
      };
      conv((L.qkv as { fused: string }).fused, H, 3 * H);
      conv(L.attnOut, H, H);
      conv(L.mlp!.in[0], H, c.intermediate);
      conv(L.mlp!.out, c.intermediate, H);
    }
    return s;
  },
});
