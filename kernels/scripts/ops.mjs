// The one list of catechism's native ops. `node scripts/gen-ops.mjs` derives
// from it, into committed files:
//   native/gen/backend.h   the backend table (struct ck::Backend) and the
//                          declarations every backend implements (cpu, cuda, cuda-sim)
//   native/gen/napi_ops.inc  the N-API decoders: one function per op that
//                          decodes its arguments and calls the chosen backend
//   src/gen/native.ts      the typed wire API (`Native`) and the argument type
//                          checks the public API in src/index.ts runs first
// test/gen.test.ts fails when the committed files are stale.
//
// An op: `name` (the addon export), `label` (the public op named in errors,
// default name), `fn` (the backend member, default name), `args` (wire order),
// `sig` (the C++ parameter list of the backend function), `call` (its
// arguments, from the decoded locals), optional `pre` (C++ run before the call,
// after decoding; may `return nullptr` after `A.fail(...)`).
//
// An argument is 'name:kind' with kind one of
//   f32 i32 u8 u16   a buffer: a typed array (host) or a DeviceArray (cuda);
//                    '?' nullable, '>' written only, '<>' read and written (the
//                    default is read only). A host buffer staged to the GPU is
//                    uploaded unless written only, downloaded unless read only.
//                    Each buffer also decodes its element count as n_<name>.
//   desc             a Float64Array parameter block (host only, never staged)
//   num int bool     numbers (int decodes to i64)
export const OPS = [
  { name: 'gemm', args: ['a:f32', 'b:f32', 'c:f32<>', 'bias:f32?', 'p:desc'],
    sig: 'const GemmParams& p',
    pre: 'ck::GemmParams g;\n  if (!gemmParams(A, 4, a, b, c, bias, p, n_p, g)) return nullptr;',
    call: 'g' },
  { name: 'unary', args: ['op:int', 'x:f32', 'out:f32>'],
    sig: 'Unary op, const float* x, float* out, i64 n', call: 'ck::Unary(op), x, out, i64(n_out)' },
  { name: 'unaryBackward', args: ['op:int', 'x:f32', 'gradOut:f32', 'gradIn:f32<>', 'accumulate:bool'],
    sig: 'Unary op, const float* x, const float* gy, float* gx, i64 n, bool accumulate',
    call: 'ck::Unary(op), x, gradOut, gradIn, i64(n_gradIn), accumulate' },
  { name: 'binarySame', label: 'binary', args: ['op:int', 'a:f32', 'b:f32', 'out:f32>'],
    sig: 'Binary op, const float* a, const float* b, float* out, i64 n', call: 'ck::Binary(op), a, b, out, i64(n_out)' },
  { name: 'binaryBcast', label: 'binary', fn: 'binary', args: ['op:int', 'a:f32', 'b:f32', 'out:f32>', 'desc:desc'],
    sig: 'Binary op, const float* a, const float* b, float* out, const BroadcastDesc& d',
    pre: 'ck::BroadcastDesc d;\n  if (!broadcastDesc(A, 4, desc, n_desc, d)) return nullptr;',
    call: 'ck::Binary(op), a, b, out, d' },
  { name: 'scale', args: ['x:f32', 'alpha:num', 'out:f32>'],
    sig: 'const float* x, float alpha, float* out, i64 n', call: 'x, float(alpha), out, i64(n_out)' },
  { name: 'axpy', args: ['alpha:num', 'x:f32', 'y:f32<>'],
    sig: 'float alpha, const float* x, float* y, i64 n', call: 'float(alpha), x, y, i64(n_y)' },
  { name: 'fill', args: ['x:f32>', 'value:num'], sig: 'float* x, float value, i64 n', call: 'x, float(value), i64(n_x)' },
  { name: 'reduce', args: ['op:int', 'x:f32', 'out:f32>', 'outer:int', 'len:int', 'inner:int'],
    sig: 'Reduce op, const float* x, float* out, i64 outer, i64 len, i64 inner',
    call: 'ck::Reduce(op), x, out, outer, len, inner' },
  { name: 'permute', args: ['x:f32', 'out:f32>', 'desc:desc'],
    sig: 'const float* x, float* out, int ndim, const i64* outShape, const i64* inStrides',
    pre: 'int ndim = 0;\n  i64 shape[16], strides[16];\n  if (!permuteDesc(A, 2, desc, n_desc, ndim, shape, strides)) return nullptr;',
    call: 'x, out, ndim, shape, strides' },
  { name: 'softmax', args: ['x:f32', 'out:f32>', 'rows:int', 'cols:int', 'causal:bool', 'queryLen:int', 'keyPad:u8?', 'rowsPerBatch:int'],
    sig: 'const float* x, float* y, i64 rows, i64 cols, const SoftmaxMask* mask',
    pre: 'ck::SoftmaxMask m;\n  m.causal = causal; m.queryLen = queryLen; m.keyPad = keyPad; m.rowsPerBatch = rowsPerBatch;',
    call: 'x, out, rows, cols, (causal || keyPad) ? &m : nullptr' },
  { name: 'softmaxBackward', args: ['y:f32', 'dy:f32', 'dx:f32<>', 'rows:int', 'cols:int', 'accumulate:bool'],
    sig: 'const float* y, const float* dy, float* dx, i64 rows, i64 cols, bool accumulate',
    call: 'y, dy, dx, rows, cols, accumulate' },
  { name: 'logSoftmax', args: ['x:f32', 'out:f32>', 'rows:int', 'cols:int'],
    sig: 'const float* x, float* y, i64 rows, i64 cols', call: 'x, out, rows, cols' },
  { name: 'layerNorm', args: ['x:f32', 'gamma:f32?', 'beta:f32?', 'out:f32>', 'rows:int', 'cols:int', 'eps:num', 'mean:f32>', 'rstd:f32>'],
    sig: 'const float* x, const float* gamma, const float* beta, float* out, i64 rows, i64 cols, float eps, float* mean, float* rstd',
    call: 'x, gamma, beta, out, rows, cols, float(eps), mean, rstd' },
  { name: 'layerNormBackward',
    args: ['x:f32', 'gamma:f32?', 'mean:f32', 'rstd:f32', 'dy:f32', 'dx:f32?>', 'dgamma:f32?<>', 'dbeta:f32?<>', 'rows:int', 'cols:int'],
    sig: 'const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy, float* dx, float* dgamma, float* dbeta, i64 rows, i64 cols',
    call: 'x, gamma, mean, rstd, dy, dx, dgamma, dbeta, rows, cols' },
  { name: 'rmsNorm', args: ['x:f32', 'weight:f32?', 'out:f32>', 'rows:int', 'cols:int', 'eps:num', 'rstd:f32>'],
    sig: 'const float* x, const float* w, float* out, i64 rows, i64 cols, float eps, float* rstd',
    call: 'x, weight, out, rows, cols, float(eps), rstd' },
  { name: 'rmsNormBackward', args: ['x:f32', 'weight:f32?', 'rstd:f32', 'dy:f32', 'dx:f32?>', 'dweight:f32?<>', 'rows:int', 'cols:int'],
    sig: 'const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw, i64 rows, i64 cols',
    call: 'x, weight, rstd, dy, dx, dweight, rows, cols' },
  { name: 'rope',
    args: ['x:f32', 'out:f32>', 'batch:int', 'heads:int', 'seq:int', 'headDim:int', 'rotaryDim:int', 'positions:i32', 'theta:num', 'inverse:bool'],
    sig: 'const float* x, float* out, i64 batch, i64 heads, i64 seq, i64 headDim, i64 rotaryDim, const std::int32_t* positions, double theta, bool inverse',
    call: 'x, out, batch, heads, seq, headDim, rotaryDim, positions, theta, inverse' },
  { name: 'embedding', args: ['table:f32', 'dim:int', 'ids:i32', 'out:f32>'],
    sig: 'const float* table, i64 dim, const std::int32_t* ids, i64 count, float* out', call: 'table, dim, ids, i64(n_ids), out' },
  { name: 'embeddingBackward', args: ['gradOut:f32', 'ids:i32', 'gradTable:f32<>', 'dim:int'],
    sig: 'const float* gy, const std::int32_t* ids, i64 count, float* gtable, i64 dim', call: 'gradOut, ids, i64(n_ids), gradTable, dim' },
  { name: 'crossEntropy', args: ['logits:f32', 'targets:i32', 'rows:int', 'vocab:int', 'losses:f32>', 'gradLogits:f32?>', 'ignoreIndex:int'],
    sig: 'const float* logits, const std::int32_t* targets, i64 rows, i64 vocab, float* losses, float* grad, std::int32_t ignoreIndex',
    call: 'logits, targets, rows, vocab, losses, gradLogits, std::int32_t(ignoreIndex)' },
  { name: 'klDiv', args: ['pLogits:f32', 'qLogits:f32', 'rows:int', 'vocab:int', 'out:f32>', 'gradQ:f32?>'],
    sig: 'const float* p, const float* q, i64 rows, i64 vocab, float* out, float* gradQ',
    call: 'pLogits, qLogits, rows, vocab, out, gradQ' },
  { name: 'topk', args: ['x:f32', 'rows:int', 'cols:int', 'k:int', 'values:f32>', 'indices:i32>'],
    sig: 'const float* x, i64 rows, i64 cols, i64 k, float* values, std::int32_t* indices',
    call: 'x, rows, cols, k, values, indices' },
  { name: 'adamw', args: ['param:f32<>', 'grad:f32', 'm:f32<>', 'v:f32<>', 'lr:num', 'beta1:num', 'beta2:num', 'eps:num', 'weightDecay:num', 'step:num'],
    sig: 'float* param, const float* grad, float* m, float* v, i64 n, const AdamWParams& o',
    pre: 'ck::AdamWParams o{lr, beta1, beta2, eps, weightDecay, step};',
    call: 'param, grad, m, v, i64(n_param), o' },
  { name: 'f16ToF32', args: ['src:u16', 'out:f32>'], sig: 'const std::uint16_t* src, float* out, i64 n', call: 'src, out, i64(n_src)' },
  { name: 'bf16ToF32', args: ['src:u16', 'out:f32>'], sig: 'const std::uint16_t* src, float* out, i64 n', call: 'src, out, i64(n_src)' },
  { name: 'f32ToF16', args: ['src:f32', 'out:u16>'], sig: 'const float* src, std::uint16_t* out, i64 n', call: 'src, out, i64(n_src)' },
  { name: 'f32ToBf16', args: ['src:f32', 'out:u16>'], sig: 'const float* src, std::uint16_t* out, i64 n', call: 'src, out, i64(n_src)' },
];

/** Parses 'name:kind?<>' into its parts. */
export function parseArg(s) {
  const m = /^(\w+):(f32|i32|u8|u16|desc|num|int|bool)(\?)?(<>|>)?$/.exec(s);
  if (!m) throw new Error(`ops.mjs: bad argument spec ${JSON.stringify(s)}`);
  const [, name, kind, opt, dir] = m;
  const buffer = kind === 'f32' || kind === 'i32' || kind === 'u8' || kind === 'u16';
  return { name, kind, buffer, nullable: !!opt, read: dir !== '>', write: dir === '>' || dir === '<>' };
}
