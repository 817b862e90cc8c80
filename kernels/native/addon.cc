// N-API binding of the CPU op table. Written against the C N-API (not the C++
// wrapper) to keep per-call overhead low. The TypeScript layer (src/index.ts)
// validates shapes, lengths and ids; here every buffer's type is still checked
// so a wrong call can at worst throw, never read the wrong memory layout.
#include <node_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "ops.h"

namespace {
using ck::i64;
namespace cpu = ck::cpu;

constexpr size_t kMaxArgs = 12;

struct Args {
  napi_env env;
  napi_value v[kMaxArgs];
  size_t n = kMaxArgs;
  const char* op;
  bool failed = false;

  Args(napi_env e, napi_callback_info info, const char* name) : env(e), op(name) {
    napi_get_cb_info(env, info, &n, v, nullptr, nullptr);
  }
  void fail(const char* what, size_t i) {
    if (failed) return;
    failed = true;
    char msg[160];
    std::snprintf(msg, sizeof msg, "kernels.%s: argument %zu: %s", op, i, what);
    napi_throw_type_error(env, nullptr, msg);
  }
  bool isNull(size_t i) {
    if (i >= n) return true;
    napi_valuetype t;
    napi_typeof(env, v[i], &t);
    return t == napi_null || t == napi_undefined;
  }
  void* arr(size_t i, napi_typedarray_type want, size_t* len = nullptr, bool nullable = false) {
    if (nullable && isNull(i)) { if (len) *len = 0; return nullptr; }
    bool is = false;
    if (i < n) napi_is_typedarray(env, v[i], &is);
    if (!is) { fail("expected a typed array", i); return nullptr; }
    napi_typedarray_type t;
    size_t l;
    void* data;
    napi_get_typedarray_info(env, v[i], &t, &l, &data, nullptr, nullptr);
    if (t != want) { fail("typed array of the wrong element type", i); return nullptr; }
    if (len) *len = l;
    return data;
  }
  float* f32(size_t i, size_t* len = nullptr, bool nullable = false) {
    return static_cast<float*>(arr(i, napi_float32_array, len, nullable));
  }
  double num(size_t i) {
    double d = 0;
    if (i >= n || napi_get_value_double(env, v[i], &d) != napi_ok) fail("expected a number", i);
    return d;
  }
  i64 int64(size_t i) { return i64(num(i)); }
  bool flag(size_t i) {
    if (i >= n) return false;
    bool b = false;
    if (napi_get_value_bool(env, v[i], &b) != napi_ok) return num(i) != 0;
    return b;
  }
};

napi_value undef(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

#define OP(name) napi_value name(napi_env env, napi_callback_info info)
#define ARGS(name) Args A(env, info, name)
#define DONE \
  if (A.failed) return nullptr;

OP(Gemm) {
  ARGS("gemm");
  size_t na = 0, nb = 0, nc = 0, np = 0;
  const float* a = A.f32(0, &na);
  const float* b = A.f32(1, &nb);
  float* c = A.f32(2, &nc);
  const float* bias = A.f32(3, nullptr, true);
  const double* q = static_cast<const double*>(A.arr(4, napi_float64_array, &np));
  DONE;
  if (np < 17) { A.fail("gemm parameter block too short", 4); return nullptr; }
  ck::GemmParams g;
  g.transA = q[0] != 0; g.transB = q[1] != 0;
  g.m = i64(q[2]); g.n = i64(q[3]); g.k = i64(q[4]);
  g.lda = i64(q[5]); g.ldb = i64(q[6]); g.ldc = i64(q[7]);
  g.a = a + i64(q[8]); g.b = b + i64(q[9]); g.c = c + i64(q[10]);
  g.strideA = i64(q[11]); g.strideB = i64(q[12]); g.strideC = i64(q[13]);
  g.batch = i64(q[14]); g.alpha = float(q[15]); g.beta = float(q[16]);
  g.bias = bias;
  cpu::gemm(g);
  return nullptr;
}

OP(Unary) {
  ARGS("unary");
  int op = int(A.num(0));
  size_t n = 0;
  const float* x = A.f32(1);
  float* out = A.f32(2, &n);
  DONE;
  cpu::unary(ck::Unary(op), x, out, i64(n));
  return nullptr;
}

OP(UnaryBackward) {
  ARGS("unaryBackward");
  int op = int(A.num(0));
  size_t n = 0;
  const float* x = A.f32(1);
  const float* gy = A.f32(2);
  float* gx = A.f32(3, &n);
  bool acc = A.flag(4);
  DONE;
  cpu::unaryBackward(ck::Unary(op), x, gy, gx, i64(n), acc);
  return nullptr;
}

OP(BinarySame) {
  ARGS("binary");
  int op = int(A.num(0));
  size_t n = 0;
  const float* a = A.f32(1);
  const float* b = A.f32(2);
  float* out = A.f32(3, &n);
  DONE;
  cpu::binarySame(ck::Binary(op), a, b, out, i64(n));
  return nullptr;
}

OP(BinaryBcast) {
  ARGS("binary");
  int op = int(A.num(0));
  size_t nd = 0;
  const float* a = A.f32(1);
  const float* b = A.f32(2);
  float* out = A.f32(3);
  const double* q = static_cast<const double*>(A.arr(4, napi_float64_array, &nd));
  DONE;
  ck::BroadcastDesc d;
  d.ndim = int(q[0]);
  if (d.ndim < 0 || d.ndim > 16 || nd < size_t(1 + 3 * d.ndim)) { A.fail("bad broadcast descriptor", 4); return nullptr; }
  for (int i = 0; i < d.ndim; ++i) {
    d.shape[i] = i64(q[1 + i]);
    d.strideA[i] = i64(q[1 + d.ndim + i]);
    d.strideB[i] = i64(q[1 + 2 * d.ndim + i]);
  }
  cpu::binary(ck::Binary(op), a, b, out, d);
  return nullptr;
}

OP(Scale) {
  ARGS("scale");
  size_t n = 0;
  const float* x = A.f32(0);
  double alpha = A.num(1);
  float* out = A.f32(2, &n);
  DONE;
  cpu::scale(x, float(alpha), out, i64(n));
  return nullptr;
}

OP(Axpy) {
  ARGS("axpy");
  size_t n = 0;
  double alpha = A.num(0);
  const float* x = A.f32(1);
  float* y = A.f32(2, &n);
  DONE;
  cpu::axpy(float(alpha), x, y, i64(n));
  return nullptr;
}

OP(Fill) {
  ARGS("fill");
  size_t n = 0;
  float* x = A.f32(0, &n);
  double v = A.num(1);
  DONE;
  cpu::fill(x, float(v), i64(n));
  return nullptr;
}

OP(Reduce) {
  ARGS("reduce");
  int op = int(A.num(0));
  const float* x = A.f32(1);
  float* out = A.f32(2);
  i64 outer = A.int64(3), len = A.int64(4), inner = A.int64(5);
  DONE;
  cpu::reduce(ck::Reduce(op), x, out, outer, len, inner);
  return nullptr;
}

OP(Permute) {
  ARGS("permute");
  size_t nd = 0;
  const float* x = A.f32(0);
  float* out = A.f32(1);
  const double* q = static_cast<const double*>(A.arr(2, napi_float64_array, &nd));
  DONE;
  int ndim = int(q[0]);
  if (ndim < 0 || ndim > 16 || nd < size_t(1 + 2 * ndim)) { A.fail("bad permute descriptor", 2); return nullptr; }
  i64 shape[16], strides[16];
  for (int i = 0; i < ndim; ++i) { shape[i] = i64(q[1 + i]); strides[i] = i64(q[1 + ndim + i]); }
  cpu::permute(x, out, ndim, shape, strides);
  return nullptr;
}

OP(Softmax) {
  ARGS("softmax");
  const float* x = A.f32(0);
  float* out = A.f32(1);
  i64 rows = A.int64(2), cols = A.int64(3);
  bool causal = A.flag(4);
  i64 queryLen = A.int64(5);
  const auto* pad = static_cast<const std::uint8_t*>(A.arr(6, napi_uint8_array, nullptr, true));
  i64 rowsPerBatch = A.int64(7);
  DONE;
  ck::SoftmaxMask m;
  m.causal = causal; m.queryLen = queryLen; m.keyPad = pad; m.rowsPerBatch = rowsPerBatch;
  cpu::softmax(x, out, rows, cols, (causal || pad) ? &m : nullptr);
  return nullptr;
}

OP(SoftmaxBackward) {
  ARGS("softmaxBackward");
  const float* y = A.f32(0);
  const float* dy = A.f32(1);
  float* dx = A.f32(2);
  i64 rows = A.int64(3), cols = A.int64(4);
  bool acc = A.flag(5);
  DONE;
  cpu::softmaxBackward(y, dy, dx, rows, cols, acc);
  return nullptr;
}

OP(LogSoftmax) {
  ARGS("logSoftmax");
  const float* x = A.f32(0);
  float* out = A.f32(1);
  i64 rows = A.int64(2), cols = A.int64(3);
  DONE;
  cpu::logSoftmax(x, out, rows, cols);
  return nullptr;
}

OP(LayerNorm) {
  ARGS("layerNorm");
  const float* x = A.f32(0);
  const float* gamma = A.f32(1, nullptr, true);
  const float* beta = A.f32(2, nullptr, true);
  float* out = A.f32(3);
  i64 rows = A.int64(4), cols = A.int64(5);
  double eps = A.num(6);
  float* mean = A.f32(7);
  float* rstd = A.f32(8);
  DONE;
  cpu::layerNorm(x, gamma, beta, out, rows, cols, float(eps), mean, rstd);
  return nullptr;
}

OP(LayerNormBackward) {
  ARGS("layerNormBackward");
  const float* x = A.f32(0);
  const float* gamma = A.f32(1, nullptr, true);
  const float* mean = A.f32(2);
  const float* rstd = A.f32(3);
  const float* dy = A.f32(4);
  float* dx = A.f32(5, nullptr, true);
  float* dg = A.f32(6, nullptr, true);
  float* db = A.f32(7, nullptr, true);
  i64 rows = A.int64(8), cols = A.int64(9);
  DONE;
  cpu::layerNormBackward(x, gamma, mean, rstd, dy, dx, dg, db, rows, cols);
  return nullptr;
}

OP(RmsNorm) {
  ARGS("rmsNorm");
  const float* x = A.f32(0);
  const float* w = A.f32(1, nullptr, true);
  float* out = A.f32(2);
  i64 rows = A.int64(3), cols = A.int64(4);
  double eps = A.num(5);
  float* rstd = A.f32(6);
  DONE;
  cpu::rmsNorm(x, w, out, rows, cols, float(eps), rstd);
  return nullptr;
}

OP(RmsNormBackward) {
  ARGS("rmsNormBackward");
  const float* x = A.f32(0);
  const float* w = A.f32(1, nullptr, true);
  const float* rstd = A.f32(2);
  const float* dy = A.f32(3);
  float* dx = A.f32(4, nullptr, true);
  float* dw = A.f32(5, nullptr, true);
  i64 rows = A.int64(6), cols = A.int64(7);
  DONE;
  cpu::rmsNormBackward(x, w, rstd, dy, dx, dw, rows, cols);
  return nullptr;
}

OP(Rope) {
  ARGS("rope");
  const float* x = A.f32(0);
  float* out = A.f32(1);
  i64 batch = A.int64(2), heads = A.int64(3), seq = A.int64(4), headDim = A.int64(5), rot = A.int64(6);
  const auto* pos = static_cast<const std::int32_t*>(A.arr(7, napi_int32_array));
  double theta = A.num(8);
  bool inverse = A.flag(9);
  DONE;
  cpu::rope(x, out, batch, heads, seq, headDim, rot, pos, theta, inverse);
  return nullptr;
}

OP(Embedding) {
  ARGS("embedding");
  const float* table = A.f32(0);
  i64 dim = A.int64(1);
  size_t count = 0;
  const auto* ids = static_cast<const std::int32_t*>(A.arr(2, napi_int32_array, &count));
  float* out = A.f32(3);
  DONE;
  cpu::embedding(table, dim, ids, i64(count), out);
  return nullptr;
}

OP(EmbeddingBackward) {
  ARGS("embeddingBackward");
  const float* gy = A.f32(0);
  size_t count = 0;
  const auto* ids = static_cast<const std::int32_t*>(A.arr(1, napi_int32_array, &count));
  float* gt = A.f32(2);
  i64 dim = A.int64(3);
  DONE;
  cpu::embeddingBackward(gy, ids, i64(count), gt, dim);
  return nullptr;
}

OP(CrossEntropy) {
  ARGS("crossEntropy");
  const float* logits = A.f32(0);
  const auto* t = static_cast<const std::int32_t*>(A.arr(1, napi_int32_array));
  i64 rows = A.int64(2), vocab = A.int64(3);
  float* losses = A.f32(4);
  float* grad = A.f32(5, nullptr, true);
  i64 ignore = A.int64(6);
  DONE;
  cpu::crossEntropy(logits, t, rows, vocab, losses, grad, std::int32_t(ignore));
  return nullptr;
}

OP(KlDiv) {
  ARGS("klDiv");
  const float* p = A.f32(0);
  const float* q = A.f32(1);
  i64 rows = A.int64(2), vocab = A.int64(3);
  float* out = A.f32(4);
  float* gq = A.f32(5, nullptr, true);
  DONE;
  cpu::klDiv(p, q, rows, vocab, out, gq);
  return nullptr;
}

OP(Topk) {
  ARGS("topk");
  const float* x = A.f32(0);
  i64 rows = A.int64(1), cols = A.int64(2), k = A.int64(3);
  float* values = A.f32(4);
  auto* idx = static_cast<std::int32_t*>(A.arr(5, napi_int32_array));
  DONE;
  cpu::topk(x, rows, cols, k, values, idx);
  return nullptr;
}

OP(AdamW) {
  ARGS("adamw");
  size_t n = 0;
  float* p = A.f32(0, &n);
  const float* g = A.f32(1);
  float* m = A.f32(2);
  float* v = A.f32(3);
  ck::AdamWParams o;
  o.lr = A.num(4); o.beta1 = A.num(5); o.beta2 = A.num(6);
  o.eps = A.num(7); o.weightDecay = A.num(8); o.step = A.num(9);
  DONE;
  cpu::adamw(p, g, m, v, i64(n), o);
  return nullptr;
}

OP(F16ToF32) {
  ARGS("f16ToF32");
  size_t n = 0;
  const auto* s = static_cast<const std::uint16_t*>(A.arr(0, napi_uint16_array, &n));
  float* o = A.f32(1);
  DONE;
  cpu::f16ToF32(s, o, i64(n));
  return nullptr;
}
OP(Bf16ToF32) {
  ARGS("bf16ToF32");
  size_t n = 0;
  const auto* s = static_cast<const std::uint16_t*>(A.arr(0, napi_uint16_array, &n));
  float* o = A.f32(1);
  DONE;
  cpu::bf16ToF32(s, o, i64(n));
  return nullptr;
}
OP(F32ToF16) {
  ARGS("f32ToF16");
  size_t n = 0;
  const float* s = A.f32(0, &n);
  auto* o = static_cast<std::uint16_t*>(A.arr(1, napi_uint16_array));
  DONE;
  cpu::f32ToF16(s, o, i64(n));
  return nullptr;
}
OP(F32ToBf16) {
  ARGS("f32ToBf16");
  size_t n = 0;
  const float* s = A.f32(0, &n);
  auto* o = static_cast<std::uint16_t*>(A.arr(1, napi_uint16_array));
  DONE;
  cpu::f32ToBf16(s, o, i64(n));
  return nullptr;
}

OP(SetThreads) {
  ARGS("setThreads");
  i64 n = A.int64(0);
  DONE;
  cpu::setThreads(int(n));
  return nullptr;
}

OP(Threads) {
  napi_value r;
  napi_create_int32(env, cpu::threads(), &r);
  (void)info;
  return r;
}

OP(SimdLevel) {
  napi_value r;
  napi_create_int32(env, int(cpu::simd()), &r);
  (void)info;
  return r;
}

OP(BestSimdLevel) {
  napi_value r;
  napi_create_int32(env, int(cpu::bestSimd()), &r);
  (void)info;
  return r;
}

OP(LimitSimd) {
  ARGS("limitSimd");
  i64 n = A.int64(0);
  DONE;
  cpu::limitSimd(int(n));
  return nullptr;
}

OP(Noop) {
  (void)info;
  return undef(env);
}

napi_value Init(napi_env env, napi_value exports) {
  struct Entry { const char* name; napi_callback fn; };
  static const Entry table[] = {
      {"gemm", Gemm}, {"unary", Unary}, {"unaryBackward", UnaryBackward}, {"binarySame", BinarySame},
      {"binaryBcast", BinaryBcast}, {"scale", Scale}, {"axpy", Axpy}, {"fill", Fill}, {"reduce", Reduce},
      {"permute", Permute}, {"softmax", Softmax}, {"softmaxBackward", SoftmaxBackward},
      {"logSoftmax", LogSoftmax}, {"layerNorm", LayerNorm}, {"layerNormBackward", LayerNormBackward},
      {"rmsNorm", RmsNorm}, {"rmsNormBackward", RmsNormBackward}, {"rope", Rope}, {"embedding", Embedding},
      {"embeddingBackward", EmbeddingBackward}, {"crossEntropy", CrossEntropy}, {"klDiv", KlDiv},
      {"topk", Topk}, {"adamw", AdamW}, {"f16ToF32", F16ToF32}, {"bf16ToF32", Bf16ToF32},
      {"f32ToF16", F32ToF16}, {"f32ToBf16", F32ToBf16}, {"setThreads", SetThreads}, {"threads", Threads},
      {"simdLevel", SimdLevel}, {"bestSimdLevel", BestSimdLevel}, {"limitSimd", LimitSimd}, {"noop", Noop},
  };
  for (const Entry& e : table) {
    napi_value fn;
    napi_create_function(env, e.name, NAPI_AUTO_LENGTH, e.fn, nullptr, &fn);
    napi_set_named_property(env, exports, e.name, fn);
  }
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
