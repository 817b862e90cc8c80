// N-API binding of the op table. Written against the C N-API (not the C++
// wrapper) to keep per-call overhead low. The per-op decoders are generated
// (gen/napi_ops.inc, from scripts/ops.mjs); this file holds what they share:
// argument decoding, the choice of backend, staging host buffers to the GPU,
// device buffers, and the runtime exports. The TypeScript layer
// (src/index.ts) validates shapes, lengths and ids; here every buffer's type
// is still checked so a wrong call can at worst throw, never read the wrong
// memory layout.
//
// Backend choice, per call: an op whose buffers are DeviceArrays runs on the
// CUDA backend over device memory. An op on host buffers runs on the host
// backend chosen at run time by setHostBackend: cpu (the default), cuda-sim
// (the CUDA kernel bodies run on the CPU, for tests) or cuda (each host buffer
// is staged to the GPU and back: what `--device cuda` selects).
#include <node_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "ops.h"
#include "cpu/linalg64.h"

namespace {
using ck::i64;
namespace cpu = ck::cpu;

constexpr size_t kMaxArgs = 12;

enum class HostMode : int { Cpu = 0, CudaSim = 1, CudaStaged = 2 };
HostMode hostMode = HostMode::Cpu;
const ck::Backend* hostBackend = &cpu::table();

/** A DeviceArray's native side (napi_wrap'ed onto the JS object). */
struct DevBuf {
  // napi_wrap's key is shared by every addon of the isolate: the tag tells our objects from others'
  static constexpr std::uint64_t kTag = 0x636b446576427566ull;
  std::uint64_t tag = kTag;
  void* ptr = nullptr;
  size_t bytes = 0;
  size_t length = 0;
  napi_typedarray_type type = napi_float32_array;
};

const ck::DeviceRuntime* deviceRuntime() {
#if defined(CK_WITH_CUDA)
  return &ck::cuda::runtime();
#else
  return nullptr;
#endif
}

size_t elemBytes(napi_typedarray_type t) {
  switch (t) {
    case napi_uint8_array: return 1;
    case napi_uint16_array: return 2;
    default: return 4;
  }
}

struct Staged { void* host; const void* dev; size_t bytes; };

struct Args {
  napi_env env;
  napi_value v[kMaxArgs];
  size_t n = kMaxArgs;
  const char* op;
  bool failed = false;
  bool sawHost = false, sawDevice = false;
  const ck::Backend* backend = nullptr;
  // host buffers staged to the GPU that are copied back after the call
  Staged back[kMaxArgs];
  int nBack = 0;

  Args(napi_env e, napi_callback_info info, const char* name) : env(e), op(name) {
    napi_get_cb_info(env, info, &n, v, nullptr, nullptr);
  }
  void fail(const char* what, size_t i) {
    if (failed) return;
    failed = true;
    char msg[200];
    std::snprintf(msg, sizeof msg, "kernels.%s: argument %zu: %s", op, i, what);
    napi_throw_type_error(env, nullptr, msg);
  }
  void failError(const char* what) {
    if (failed) return;
    failed = true;
    char msg[480];
    std::snprintf(msg, sizeof msg, "kernels.%s: %s", op, what);
    napi_throw_error(env, nullptr, msg);
  }
  bool isNull(size_t i) {
    if (i >= n) return true;
    napi_valuetype t;
    napi_typeof(env, v[i], &t);
    return t == napi_null || t == napi_undefined;
  }
  // A buffer argument: a typed array of type `want` (host memory) or a
  // DeviceArray of that type. Returns the pointer the backend will use.
  void* buf(size_t i, napi_typedarray_type want, size_t* len, bool nullable, bool read, bool write) {
    *len = 0;
    if (nullable && isNull(i)) return nullptr;
    bool is = false;
    if (i < n) napi_is_typedarray(env, v[i], &is);
    if (is) {
      napi_typedarray_type t;
      void* data;
      napi_get_typedarray_info(env, v[i], &t, len, &data, nullptr, nullptr);
      if (t != want) { fail("typed array of the wrong element type", i); return nullptr; }
      sawHost = true;
      if (hostMode != HostMode::CudaStaged || failed) return data;
      return stage(i, data, *len * elemBytes(t), read, write);
    }
    DevBuf* d = nullptr;
    if (i < n && napi_unwrap(env, v[i], reinterpret_cast<void**>(&d)) == napi_ok && d != nullptr && d->tag == DevBuf::kTag) {
      if (d->type != want) { fail("DeviceArray of the wrong element type", i); return nullptr; }
      if (d->ptr == nullptr && d->length > 0) { fail("DeviceArray was freed", i); return nullptr; }
      sawDevice = true;
      *len = d->length;
      return d->ptr;
    }
    fail("expected a typed array or a DeviceArray", i);
    return nullptr;
  }
  void* stage(size_t i, void* host, size_t bytes, bool read, bool write) {
    const ck::DeviceRuntime* rt = deviceRuntime();
    void* dev = rt->scratch(int(i), bytes);
    if (dev == nullptr && bytes > 0) { deviceFailure(); return nullptr; }
    if (read && bytes > 0) rt->upload(dev, host, bytes);
    if (write && bytes > 0) back[nBack++] = Staged{host, dev, bytes};
    return dev;
  }
  const double* desc(size_t i, size_t* len) {
    bool is = false;
    if (i < n) napi_is_typedarray(env, v[i], &is);
    napi_typedarray_type t = napi_int8_array;
    void* data = nullptr;
    if (is) napi_get_typedarray_info(env, v[i], &t, len, &data, nullptr, nullptr);
    if (!is || t != napi_float64_array) { fail("expected a Float64Array parameter block", i); return nullptr; }
    return static_cast<const double*>(data);
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
  // After decoding: picks the backend. False (with a pending exception) on a bad call.
  bool ready() {
    if (failed) return false;
    if (sawDevice && sawHost && hostMode != HostMode::CudaStaged) {
      failError("mixes host buffers (typed arrays) and DeviceArrays; copy one side first (DeviceArray.from / toHost)");
      return false;
    }
#if defined(CK_WITH_CUDA)
    backend = (sawDevice || hostMode == HostMode::CudaStaged) ? &ck::cuda::table() : hostBackend;
#else
    backend = hostBackend;
#endif
    return true;
  }
  void deviceFailure() {
    char msg[300] = "CUDA error";
    if (const ck::DeviceRuntime* rt = deviceRuntime()) rt->takeError(msg, sizeof msg);
    failError(msg);
  }
  // After the call: copies staged outputs back and reports a CUDA error as a JS Error.
  napi_value finish() {
    if (!sawDevice && hostMode != HostMode::CudaStaged) return nullptr;  // CPU path: nothing to do
    const ck::DeviceRuntime* rt = deviceRuntime();
    if (rt == nullptr) return nullptr;
    for (int k = 0; k < nBack; ++k) rt->download(back[k].host, back[k].dev, back[k].bytes);
    char msg[300];
    if (rt->takeError(msg, sizeof msg)) failError(msg);
    return nullptr;
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

// ---- parameter blocks (desc arguments) decoded for the generated decoders

bool gemmParams(Args& A, size_t i, const float* a, const float* b, float* c, const float* bias, const double* q, size_t np,
                ck::GemmParams& g) {
  if (np < 17) { A.fail("gemm parameter block too short", i); return false; }
  g.transA = q[0] != 0; g.transB = q[1] != 0;
  g.m = i64(q[2]); g.n = i64(q[3]); g.k = i64(q[4]);
  g.lda = i64(q[5]); g.ldb = i64(q[6]); g.ldc = i64(q[7]);
  g.a = a + i64(q[8]); g.b = b + i64(q[9]); g.c = c + i64(q[10]);
  g.strideA = i64(q[11]); g.strideB = i64(q[12]); g.strideC = i64(q[13]);
  g.batch = i64(q[14]); g.alpha = float(q[15]); g.beta = float(q[16]);
  g.bias = bias;
  return true;
}

bool broadcastDesc(Args& A, size_t i, const double* q, size_t nd, ck::BroadcastDesc& d) {
  d.ndim = nd > 0 ? int(q[0]) : -1;
  if (d.ndim < 0 || d.ndim > 16 || nd < size_t(1 + 3 * d.ndim)) { A.fail("bad broadcast descriptor", i); return false; }
  for (int k = 0; k < d.ndim; ++k) {
    d.shape[k] = i64(q[1 + k]);
    d.strideA[k] = i64(q[1 + d.ndim + k]);
    d.strideB[k] = i64(q[1 + 2 * d.ndim + k]);
  }
  return true;
}

bool permuteDesc(Args& A, size_t i, const double* q, size_t nd, int& ndim, i64* shape, i64* strides) {
  ndim = nd > 0 ? int(q[0]) : -1;
  if (ndim < 0 || ndim > 16 || nd < size_t(1 + 2 * ndim)) { A.fail("bad permute descriptor", i); return false; }
  for (int k = 0; k < ndim; ++k) { shape[k] = i64(q[1 + k]); strides[k] = i64(q[1 + ndim + k]); }
  return true;
}

#include "gen/napi_ops.inc"

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

// ---------------------------------------------------------------- float64 linear algebra (CPU, host only)
// Runtime exports, not ops: Float64Arrays only (no DeviceArrays, no staging).
// src/linalg64.ts checks shapes and overlaps; here every extent read or
// written is checked against its array once more, so a wrong call throws.

double* f64Arg(Args& A, size_t i, size_t* len) {
  bool is = false;
  if (i < A.n) napi_is_typedarray(A.env, A.v[i], &is);
  napi_typedarray_type t = napi_int8_array;
  void* data = nullptr;
  *len = 0;
  if (is) napi_get_typedarray_info(A.env, A.v[i], &t, len, &data, nullptr, nullptr);
  if (!is || t != napi_float64_array) { A.fail("expected a Float64Array", i); return nullptr; }
  return static_cast<double*>(data);
}

// One past the last element a rows×cols view with these strides touches.
bool fits(i64 rows, i64 cols, i64 rs, i64 cs, size_t len) {
  if (rows < 0 || cols < 0 || rs < 0 || cs < 0) return false;
  if (rows == 0 || cols == 0) return true;
  return (rows - 1) * rs + (cols - 1) * cs < i64(len);
}

// gemmF64(a, b, c, [m, n, k, alpha, rsa, csa, rsb, csb, beta, ldc])
OP(GemmF64) {
  ARGS("gemmF64");
  size_t na, nb, nc, np = 0;
  const double* a = f64Arg(A, 0, &na);
  const double* b = f64Arg(A, 1, &nb);
  double* c = f64Arg(A, 2, &nc);
  const double* p = A.desc(3, &np);
  DONE;
  if (np < 10) { A.fail("parameter block too short", 3); return nullptr; }
  i64 m = i64(p[0]), n = i64(p[1]), k = i64(p[2]), rsa = i64(p[4]), csa = i64(p[5]), rsb = i64(p[6]), csb = i64(p[7]),
      ldc = i64(p[9]);
  if (!fits(m, k, rsa, csa, na)) { A.fail("A's extent exceeds the array", 0); return nullptr; }
  if (!fits(k, n, rsb, csb, nb)) { A.fail("B's extent exceeds the array", 1); return nullptr; }
  if (ldc < n || !fits(m, n, ldc, 1, nc)) { A.fail("C's extent exceeds the array", 2); return nullptr; }
  cpu::dgemm(m, n, k, p[3], a, rsa, csa, b, rsb, csb, p[8], c, ldc);
  return nullptr;
}

// syrkLowerF64(a, c, [n, k, alpha, rsa, csa, beta, ldc])
OP(SyrkLowerF64) {
  ARGS("syrkLowerF64");
  size_t na, nc, np = 0;
  const double* a = f64Arg(A, 0, &na);
  double* c = f64Arg(A, 1, &nc);
  const double* p = A.desc(2, &np);
  DONE;
  if (np < 7) { A.fail("parameter block too short", 2); return nullptr; }
  i64 n = i64(p[0]), k = i64(p[1]), rsa = i64(p[3]), csa = i64(p[4]), ldc = i64(p[6]);
  if (!fits(n, k, rsa, csa, na)) { A.fail("A's extent exceeds the array", 0); return nullptr; }
  if (ldc < n || !fits(n, n, ldc, 1, nc)) { A.fail("C's extent exceeds the array", 1); return nullptr; }
  cpu::dsyrkLower(n, k, p[2], a, rsa, csa, p[5], c, ldc);
  return nullptr;
}

// choleskyF64(a, n): in place; returns -1 or the row whose pivot was not positive
OP(CholeskyF64) {
  ARGS("choleskyF64");
  size_t na;
  double* a = f64Arg(A, 0, &na);
  i64 n = A.int64(1);
  DONE;
  if (n < 0 || i64(na) < n * n) { A.fail("the array is shorter than n×n", 0); return nullptr; }
  napi_value r;
  napi_create_double(env, double(cpu::dpotrf(a, n, n)), &r);
  return r;
}

// solveRowsF64(l, n, b, m, mode): every row of b (m×n) ← row·(L·Lᵀ)⁻¹ (mode 0), row·L⁻ᵀ (1) or row·L⁻¹ (2)
OP(SolveRowsF64) {
  ARGS("solveRowsF64");
  size_t nl, nb;
  const double* l = f64Arg(A, 0, &nl);
  i64 n = A.int64(1);
  double* b = f64Arg(A, 2, &nb);
  i64 m = A.int64(3);
  i64 mode = A.int64(4);
  DONE;
  if (n < 0 || i64(nl) < n * n) { A.fail("the factor is shorter than n×n", 0); return nullptr; }
  if (m < 0 || i64(nb) < m * n) { A.fail("the right-hand sides are shorter than m×n", 2); return nullptr; }
  if (mode == 0) cpu::dpotrsRows(l, n, n, b, m, n);
  else if (mode == 1 || mode == 2) cpu::dtrsmRows(l, n, n, b, m, n, mode == 1);
  else A.fail("mode must be 0, 1 or 2", 4);
  return nullptr;
}

OP(Noop) {
  (void)info;
  return undef(env);
}

// ---- backends and device memory

napi_value str(napi_env env, const char* s) {
  napi_value r;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r);
  return r;
}

// Why the CUDA backend cannot run here (nullptr when it can).
const char* cudaMissing(char* why, size_t n) {
  const ck::DeviceRuntime* rt = deviceRuntime();
  if (rt == nullptr) {
    std::snprintf(why, n, "this build of @catechism/kernels has no CUDA backend (it was built without nvcc, or with "
                          "CATECHISM_CUDA=0; rebuild with CATECHISM_CUDA=1 on a machine with the CUDA toolkit)");
    return why;
  }
  return rt->usable(why, n) ? nullptr : why;
}

OP(CudaBuilt) {
  (void)info;
  napi_value r;
  napi_get_boolean(env, deviceRuntime() != nullptr, &r);
  return r;
}

// null when a GPU is usable, else the reason
OP(CudaMissing) {
  (void)info;
  char why[400];
  if (cudaMissing(why, sizeof why) == nullptr) {
    napi_value r;
    napi_get_null(env, &r);
    return r;
  }
  return str(env, why);
}

OP(CudaDescribe) {
  (void)info;
  char out[400] = "";
  if (const ck::DeviceRuntime* rt = deviceRuntime()) rt->describe(out, sizeof out);
  return str(env, out);
}

// 0 cpu, 1 cuda-sim, 2 cuda (staged); throws when the choice cannot run here
OP(SetHostBackend) {
  ARGS("setBackend");
  int mode = int(A.num(0));
  DONE;
  char why[400];
  if (mode == 0) { hostMode = HostMode::Cpu; hostBackend = &cpu::table(); return nullptr; }
#if defined(CK_WITH_CUDA)
  if (mode == 1) { hostMode = HostMode::CudaSim; hostBackend = &ck::cudasim::table(); return nullptr; }
  if (mode == 2) {
    if (cudaMissing(why, sizeof why) != nullptr) { A.failError(why); return nullptr; }
    hostMode = HostMode::CudaStaged; hostBackend = &cpu::table();
    return nullptr;
  }
#endif
  if (mode == 1 || mode == 2) { cudaMissing(why, sizeof why); A.failError(why); return nullptr; }
  A.fail("unknown backend", 0);
  return nullptr;
}

OP(HostBackend) {
  (void)info;
  napi_value r;
  napi_create_int32(env, int(hostMode), &r);
  return r;
}

void finalizeDevBuf(napi_env env, void* data, void*) {
  auto* d = static_cast<DevBuf*>(data);
  if (d->ptr != nullptr) {
    if (const ck::DeviceRuntime* rt = deviceRuntime()) rt->release(d->ptr);
    int64_t adj;
    napi_adjust_external_memory(env, -int64_t(d->bytes), &adj);
  }
  delete d;
}

napi_typedarray_type typeCode(int c) {
  switch (c) {
    case 1: return napi_int32_array;
    case 2: return napi_uint8_array;
    case 3: return napi_uint16_array;
    default: return napi_float32_array;
  }
}

// deviceAlloc(obj, length, typeCode): wraps device memory onto obj
OP(DeviceAlloc) {
  ARGS("DeviceArray");
  i64 length = A.int64(1);
  int tc = int(A.num(2));
  DONE;
  char why[400];
  if (cudaMissing(why, sizeof why) != nullptr) { A.failError(why); return nullptr; }
  auto* d = new DevBuf;
  d->type = typeCode(tc);
  d->length = size_t(length);
  d->bytes = d->length * elemBytes(d->type);
  const ck::DeviceRuntime* rt = deviceRuntime();
  d->ptr = d->bytes > 0 ? rt->alloc(d->bytes) : nullptr;
  if (d->ptr == nullptr && d->bytes > 0) { delete d; A.deviceFailure(); return nullptr; }
  if (napi_wrap(env, A.v[0], d, finalizeDevBuf, nullptr, nullptr) != napi_ok) {
    if (d->ptr) rt->release(d->ptr);
    delete d;
    A.fail("could not wrap the DeviceArray", 0);
    return nullptr;
  }
  int64_t adj;
  napi_adjust_external_memory(env, int64_t(d->bytes), &adj);  // lets V8 collect unreferenced device arrays
  return nullptr;
}

DevBuf* devArg(Args& A, size_t i) {
  DevBuf* d = nullptr;
  if (i >= A.n || napi_unwrap(A.env, A.v[i], reinterpret_cast<void**>(&d)) != napi_ok || d == nullptr || d->tag != DevBuf::kTag) {
    A.fail("expected a DeviceArray", i);
    return nullptr;
  }
  return d;
}

// deviceCopy(dev, host, toDevice): whole-array copy between a DeviceArray and a typed array of the same length
OP(DeviceCopy) {
  ARGS("DeviceArray.copy");
  DevBuf* d = devArg(A, 0);
  bool toDevice = A.flag(2);
  DONE;
  bool is = false;
  napi_is_typedarray(env, A.v[1], &is);
  if (!is) { A.fail("expected a typed array", 1); return nullptr; }
  napi_typedarray_type t;
  size_t len;
  void* data;
  napi_get_typedarray_info(env, A.v[1], &t, &len, &data, nullptr, nullptr);
  if (t != d->type || len != d->length) { A.fail("typed array of the wrong type or length", 1); return nullptr; }
  if (d->ptr == nullptr && d->length > 0) { A.fail("DeviceArray was freed", 0); return nullptr; }
  const ck::DeviceRuntime* rt = deviceRuntime();
  if (d->bytes > 0) {
    if (toDevice) rt->upload(d->ptr, data, d->bytes);
    else rt->download(data, d->ptr, d->bytes);
  }
  char msg[300];
  if (rt->takeError(msg, sizeof msg)) A.failError(msg);
  return nullptr;
}

OP(DeviceFree) {
  ARGS("DeviceArray.free");
  DevBuf* d = devArg(A, 0);
  DONE;
  if (d->ptr != nullptr) {
    deviceRuntime()->release(d->ptr);
    int64_t adj;
    napi_adjust_external_memory(env, -int64_t(d->bytes), &adj);
    d->ptr = nullptr;
  }
  return nullptr;
}

OP(DeviceSync) {
  ARGS("synchronize");
  if (const ck::DeviceRuntime* rt = deviceRuntime()) {
    rt->synchronize();
    char msg[300];
    if (rt->takeError(msg, sizeof msg)) A.failError(msg);
  }
  return nullptr;
}

napi_value Init(napi_env env, napi_value exports) {
  struct Entry { const char* name; napi_callback fn; };
#define CK_ENTRY(name, fn) {name, fn},
  static const Entry table[] = {
      CK_NAPI_OPS(CK_ENTRY)
      {"setThreads", SetThreads}, {"threads", Threads}, {"simdLevel", SimdLevel}, {"bestSimdLevel", BestSimdLevel},
      {"limitSimd", LimitSimd}, {"noop", Noop}, {"cudaBuilt", CudaBuilt}, {"cudaMissing", CudaMissing},
      {"cudaDescribe", CudaDescribe}, {"setHostBackend", SetHostBackend}, {"hostBackend", HostBackend},
      {"deviceAlloc", DeviceAlloc}, {"deviceCopy", DeviceCopy}, {"deviceFree", DeviceFree}, {"deviceSync", DeviceSync},
      {"gemmF64", GemmF64}, {"syrkLowerF64", SyrkLowerF64}, {"choleskyF64", CholeskyF64},
      {"solveRowsF64", SolveRowsF64},
  };
#undef CK_ENTRY
  for (const Entry& e : table) {
    napi_value fn;
    napi_create_function(env, e.name, NAPI_AUTO_LENGTH, e.fn, nullptr, &fn);
    napi_set_named_property(env, exports, e.name, fn);
  }
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
