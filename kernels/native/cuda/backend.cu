// The CUDA backend (ck::cuda: kernels on the GPU, device memory) and its host
// twin (ck::cudasim: the same kernel bodies run in a loop on the CPU over host
// memory, which is how CI without a GPU tests them). Built only when nvcc is
// found (binding.gyp, scripts/cuda-config.mjs); fp32 throughout.
//
// GEMM goes through cuBLAS when libcublas can be opened at run time (dlopen:
// no build-time dependency, and the dev machines' toolkit ships no cuBLAS),
// else through our tiled kernel (kernels.cuh, GemmTile). CATECHISM_CUBLAS=0
// forces the tiled kernel.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels.cuh"

namespace ck::kern {
namespace {

// ------------------------------------------------------------ errors (sticky until taken)

char gErr[300];
bool gHasErr = false;

bool check(cudaError_t e, const char* where) {
  if (e == cudaSuccess) return true;
  if (!gHasErr) {
    std::snprintf(gErr, sizeof gErr, "CUDA error in %s: %s (%s)", where, cudaGetErrorString(e), cudaGetErrorName(e));
    gHasErr = true;
  }
  return false;
}

// ------------------------------------------------------------ GPU execution

template <class F>
__global__ void __launch_bounds__(256) gridLoop(i64 n, F f) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x) f(i);
}

__global__ void __launch_bounds__(kThreads) gemmKernel(GemmTile t, i64 z0) {
  __shared__ float As[kBK * kBM];
  __shared__ float Bs[kBK * kBN];
  float acc[16];
  for (int e = 0; e < 16; ++e) acc[e] = 0.f;
  const i64 z = z0 + blockIdx.z, bm = i64(blockIdx.y) * kBM, bn = i64(blockIdx.x) * kBN;
  const int tid = int(threadIdx.x);
  if (t.product)
    for (i64 k0 = 0; k0 < t.g.k; k0 += kBK) {
      t.load(tid, z, bm, bn, k0, As, Bs);
      __syncthreads();
      t.accum(tid, As, Bs, acc);
      __syncthreads();
    }
  t.store(tid, z, bm, bn, acc);
}

// cuBLAS, opened at run time; only the two entry points we call are declared
struct Cublas {
  using CreateFn = int (*)(void**);
  using SgemmSB = int (*)(void*, int, int, int, int, int, const float*, const float*, int, long long, const float*, int,
                          long long, const float*, float*, int, long long, int);
  void* handle = nullptr;
  SgemmSB sgemm = nullptr;
  const char* lib = nullptr;
  bool tried = false;

  bool ready() {
    if (tried) return sgemm != nullptr;
    tried = true;
    const char* env = std::getenv("CATECHISM_CUBLAS");
    if (env && std::strcmp(env, "0") == 0) return false;
    static const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (const char* n : names) {
      void* so = dlopen(n, RTLD_NOW | RTLD_LOCAL);
      if (!so) continue;
      auto create = reinterpret_cast<CreateFn>(dlsym(so, "cublasCreate_v2"));
      auto fn = reinterpret_cast<SgemmSB>(dlsym(so, "cublasSgemmStridedBatched"));
      if (create && fn && create(&handle) == 0) { sgemm = fn; lib = n; return true; }
    }
    return false;
  }
} cublas;

bool fitsInt(i64 v) { return v >= 0 && v <= 0x7fffffff; }

struct GpuExec {
  template <class F>
  static void run(i64 n, const F& f) {
    if (n <= 0) return;
    i64 blocks = (n + 255) / 256;
    if (blocks > (i64(1) << 20)) blocks = i64(1) << 20;
    gridLoop<<<unsigned(blocks), 256>>>(n, f);
    check(cudaGetLastError(), "kernel launch");
  }
  static void gemm(const GemmTile& t) {
    const GemmParams& g = t.g;
    if (t.product && fitsInt(g.m) && fitsInt(g.n) && fitsInt(g.k) && fitsInt(g.batch) && cublas.ready()) {
      // row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands
      int st = cublas.sgemm(cublas.handle, g.transB ? 1 : 0, g.transA ? 1 : 0, int(g.n), int(g.m), int(g.k), &g.alpha, g.b,
                            int(g.ldb), g.strideB, g.a, int(g.lda), g.strideA, &g.beta, g.c, int(g.ldc), g.strideC,
                            int(g.batch));
      if (st == 0) {
        if (g.bias) run(g.batch * g.m * g.n, BiasRowsF{g.c, g.bias, g.m, g.n, g.ldc, g.strideC});
        return;
      }
      // any cuBLAS failure (e.g. an unsupported leading dimension): the tiled kernel below
    }
    for (i64 z0 = 0; z0 < g.batch; z0 += 65535) {
      i64 nz = g.batch - z0 < 65535 ? g.batch - z0 : 65535;
      dim3 grid(unsigned((g.n + kBN - 1) / kBN), unsigned((g.m + kBM - 1) / kBM), unsigned(nz));
      gemmKernel<<<grid, kThreads>>>(t, z0);
      if (!check(cudaGetLastError(), "gemm launch")) return;
    }
  }
};

// ------------------------------------------------------------ host execution (cuda-sim)

struct HostExec {
  template <class F>
  static void run(i64 n, const F& f) {
    for (i64 i = 0; i < n; ++i) f(i);
  }
  // one thread block at a time, each phase for all threads before the next (= __syncthreads)
  static void gemm(const GemmTile& t) {
    const GemmParams& g = t.g;
    static thread_local float As[kBK * kBM], Bs[kBK * kBN], acc[kThreads * 16];
    for (i64 z = 0; z < g.batch; ++z)
      for (i64 bm = 0; bm < g.m; bm += kBM)
        for (i64 bn = 0; bn < g.n; bn += kBN) {
          std::memset(acc, 0, sizeof acc);
          if (t.product)
            for (i64 k0 = 0; k0 < g.k; k0 += kBK) {
              for (int tid = 0; tid < kThreads; ++tid) t.load(tid, z, bm, bn, k0, As, Bs);
              for (int tid = 0; tid < kThreads; ++tid) t.accum(tid, As, Bs, acc + tid * 16);
            }
          for (int tid = 0; tid < kThreads; ++tid) t.store(tid, z, bm, bn, acc + tid * 16);
        }
  }
};

// ------------------------------------------------------------ device runtime

constexpr int kSlots = 16;
void* scratchPtr[kSlots];
size_t scratchCap[kSlots];

bool usable(char* why, size_t n) {
  static int state = -1;  // -1 unknown, 0 no, 1 yes
  static char reason[300];
  if (state < 0) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (driver == nullptr) {
      std::snprintf(reason, sizeof reason, "no usable GPU: no NVIDIA driver (libcuda.so.1 cannot be loaded)");
      state = 0;
    } else if (e != cudaSuccess) {
      std::snprintf(reason, sizeof reason, "no usable GPU: the CUDA runtime says \"%s\" (%s)", cudaGetErrorString(e),
                    cudaGetErrorName(e));
      state = 0;
    } else if (count == 0) {
      std::snprintf(reason, sizeof reason, "no usable GPU: no CUDA device found");
      state = 0;
    } else {
      cudaFuncAttributes attr;
      e = cudaFuncGetAttributes(&attr, gemmKernel);
      if (e != cudaSuccess) {
        cudaDeviceProp p;
        cudaGetDeviceProperties(&p, 0);
        std::snprintf(reason, sizeof reason,
                      "the CUDA kernels were not built for this GPU (%s, sm_%d%d): %s; rebuild with "
                      "CATECHISM_CUDA_ARCH=%d%d",
                      p.name, p.major, p.minor, cudaGetErrorString(e), p.major, p.minor);
        state = 0;
      } else {
        state = 1;
      }
    }
    cudaGetLastError();  // clear
  }
  if (state == 0) std::snprintf(why, n, "%s", reason);
  return state == 1;
}

void describe(char* out, size_t n) {
  char why[300];
  if (!usable(why, sizeof why)) { std::snprintf(out, n, "unavailable: %s", why); return; }
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  int rt = 0;
  cudaRuntimeGetVersion(&rt);
  bool cb = cublas.ready();
  std::snprintf(out, n, "%s (sm_%d%d, %.1f GiB, CUDA runtime %d.%d); GEMM: %s", p.name, p.major, p.minor,
                double(p.totalGlobalMem) / double(1 << 30), rt / 1000, (rt % 1000) / 10,
                cb ? cublas.lib : "tiled kernel (no cuBLAS)");
}

void* alloc(size_t bytes) {
  void* p = nullptr;
  return check(cudaMalloc(&p, bytes), "cudaMalloc") ? p : nullptr;
}
void release(void* p) { check(cudaFree(p), "cudaFree"); }
void upload(void* dst, const void* src, size_t bytes) { check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "upload"); }
void download(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "download");
}
void* scratch(int slot, size_t bytes) {
  if (slot < 0 || slot >= kSlots) return nullptr;
  if (scratchCap[slot] < bytes) {
    if (scratchPtr[slot]) cudaFree(scratchPtr[slot]);
    size_t cap = bytes + bytes / 2;
    scratchPtr[slot] = alloc(cap);
    scratchCap[slot] = scratchPtr[slot] ? cap : 0;
  }
  return scratchPtr[slot];
}
void synchronize() { check(cudaDeviceSynchronize(), "synchronize"); }
bool takeError(char* msg, size_t n) {
  if (!gHasErr) check(cudaGetLastError(), "kernel");
  if (!gHasErr) return false;
  std::snprintf(msg, n, "%s", gErr);
  gHasErr = false;
  return true;
}

}  // namespace
}  // namespace ck::kern

namespace ck::cuda {
using Exec = ::ck::kern::GpuExec;
#include "ops_impl.inc"
const Backend& table() {
  static const Backend t = CK_BACKEND_TABLE("cuda");
  return t;
}
const DeviceRuntime& runtime() {
  static const DeviceRuntime r{kern::usable, kern::describe, kern::alloc, kern::release, kern::upload,
                               kern::download, kern::scratch, kern::synchronize, kern::takeError};
  return r;
}
}  // namespace ck::cuda

namespace ck::cudasim {
using Exec = ::ck::kern::HostExec;
#include "ops_impl.inc"
const Backend& table() {
  static const Backend t = CK_BACKEND_TABLE("cuda-sim");
  return t;
}
}  // namespace ck::cudasim
