// Neural-network kernels: softmax family, norms, rotary, embedding, losses,
// top-k and the AdamW step. Row-parallel; per-row sums accumulate in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "../ops.h"
#include "pool.h"
#include "vecmath.h"

namespace ck::cpu {
using std::int64_t;

namespace {
constexpr int64_t kGrain = 1 << 14;
inline int64_t rowGrain(int64_t cols) { return cols >= kGrain ? 1 : kGrain / (cols > 0 ? cols : 1); }

thread_local std::vector<float> tlsRow;
float* rowScratch(int64_t n) {
  if (tlsRow.size() < size_t(n)) tlsRow.resize(size_t(n));
  return tlsRow.data();
}

// e[j] = exp(x[j] - shift), vectorised when the ISA allows.
inline void expShifted(const float* x, float shift, float* e, int64_t n) {
  if (!vec::expShift(x, shift, e, n))
    for (int64_t j = 0; j < n; ++j) e[j] = std::exp(x[j] - shift);
}

// log Σ exp(x_j); `scratch` (n floats) receives exp(x_j − max).
inline double rowLogSumExp(const float* x, int64_t n, float* scratch) {
  float m = vec::max(x, n);
  if (m != m) return NAN;
  if (m == -INFINITY) return -INFINITY;
  if (m == INFINITY) return INFINITY;
  expShifted(x, m, scratch, n);
  return double(m) + std::log(vec::sum(scratch, n));
}
}  // namespace

void softmax(const float* x, float* y, int64_t rows, int64_t cols, const SoftmaxMask* mask) {
  const bool causal = mask && mask->causal;
  const std::uint8_t* pad = mask ? mask->keyPad : nullptr;
  parallelRange(rows, rowGrain(cols), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* xr = x + i * cols;
      float* yr = y + i * cols;
      int64_t limit = cols;  // keys [0, limit) may be visible
      if (causal) {
        int64_t r = i % mask->queryLen;
        limit = std::clamp<int64_t>(r + (cols - mask->queryLen) + 1, 0, cols);
      }
      const std::uint8_t* pr = pad ? pad + (i / mask->rowsPerBatch) * cols : nullptr;
      float m;
      if (!pr) {
        m = vec::max(xr, limit);
      } else {
        m = -INFINITY;
        for (int64_t j = 0; j < limit; ++j)
          if (pr[j] && !(xr[j] <= m)) m = xr[j];  // NaN wins, as in the unmasked path
      }
      if (m == -INFINITY) {  // fully masked (or all -inf): zeros
        std::memset(yr, 0, sizeof(float) * size_t(cols));
        continue;
      }
      expShifted(xr, m, yr, limit);
      if (pr)
        for (int64_t j = 0; j < limit; ++j)
          if (!pr[j]) yr[j] = 0.f;
      double s = vec::sum(yr, limit);
      for (int64_t j = limit; j < cols; ++j) yr[j] = 0.f;
      float inv = float(1.0 / s);
      for (int64_t j = 0; j < limit; ++j) yr[j] *= inv;
    }
  });
}

void softmaxBackward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool acc) {
  parallelRange(rows, rowGrain(cols), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* yr = y + i * cols;
      const float* gr = dy + i * cols;
      float* dr = dx + i * cols;
      float d = float(vec::dot(yr, gr, cols));
      if (acc)
        for (int64_t j = 0; j < cols; ++j) dr[j] += yr[j] * (gr[j] - d);
      else
        for (int64_t j = 0; j < cols; ++j) dr[j] = yr[j] * (gr[j] - d);
    }
  });
}

void logSoftmax(const float* x, float* y, int64_t rows, int64_t cols) {
  parallelRange(rows, rowGrain(cols), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float lse = float(rowLogSumExp(x + i * cols, cols, y + i * cols));
      for (int64_t j = 0; j < cols; ++j) y[i * cols + j] = x[i * cols + j] - lse;
    }
  });
}

void layerNorm(const float* x, const float* gamma, const float* beta, float* out, int64_t rows, int64_t cols,
               float eps, float* mean, float* rstd) {
  parallelRange(rows, rowGrain(cols), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* xr = x + i * cols;
      double mu = vec::sum(xr, cols) / double(cols);
      double lane[8] = {};  // two-pass variance, independent lanes so the loop vectorises
      int64_t j0 = 0;
      for (; j0 + 8 <= cols; j0 += 8)
        for (int l = 0; l < 8; ++l) { double d = xr[j0 + l] - mu; lane[l] += d * d; }
      double v = 0;
      for (int l = 0; l < 8; ++l) v += lane[l];
      for (; j0 < cols; ++j0) { double d = xr[j0] - mu; v += d * d; }
      float r = float(1.0 / std::sqrt(v / double(cols) + double(eps)));
      float m = float(mu);
      mean[i] = m;
      rstd[i] = r;
      float* o = out + i * cols;
      for (int64_t j = 0; j < cols; ++j) {
        float h = (xr[j] - m) * r;
        o[j] = h * (gamma ? gamma[j] : 1.f) + (beta ? beta[j] : 0.f);
      }
    }
  });
}

namespace {
// Runs rows in per-thread chunks, each with its own zeroed column accumulators
// (nacc arrays of `cols` doubles), then adds them into `targets` in chunk order.
template <class F>
void rowsWithColumnSums(int64_t rows, int64_t cols, int nacc, float* const* targets, F&& body) {
  int T = poolThreads();
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(T, rows / std::max<int64_t>(1, rowGrain(cols))));
  std::vector<double> partial(size_t(chunks) * size_t(nacc) * size_t(cols), 0.0);
  auto run = [&](int64_t c, int) {
    int64_t b = rows * c / chunks, e = rows * (c + 1) / chunks;
    body(b, e, partial.data() + size_t(c) * size_t(nacc) * size_t(cols));
  };
  if (chunks == 1) run(0, 0); else parallelFor(chunks, run);
  for (int a = 0; a < nacc; ++a) {
    if (!targets[a]) continue;
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += partial[(size_t(c) * nacc + a) * size_t(cols) + size_t(j)];
      targets[a][j] += float(s);
    }
  }
}
}  // namespace

void layerNormBackward(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                       float* dx, float* dgamma, float* dbeta, int64_t rows, int64_t cols) {
  float* targets[2] = {dgamma, dbeta};
  rowsWithColumnSums(rows, cols, 2, targets, [&](int64_t b, int64_t e, double* acc) {
    double* dg = acc;
    double* db = acc + cols;
    for (int64_t i = b; i < e; ++i) {
      const float* xr = x + i * cols;
      const float* g = dy + i * cols;
      float m = mean[i], r = rstd[i];
      double l1[8] = {}, l2[8] = {};  // lanes of Σ dxhat and Σ dxhat·xhat (no serial chain)
      for (int64_t j = 0; j < cols; ++j) {
        float h = (xr[j] - m) * r;
        float dh = g[j] * (gamma ? gamma[j] : 1.f);
        l1[j & 7] += dh;
        l2[j & 7] += double(dh) * h;
        dg[j] += double(g[j]) * h;
        db[j] += g[j];
      }
      double s1 = 0, s2 = 0;
      for (int l = 0; l < 8; ++l) { s1 += l1[l]; s2 += l2[l]; }
      if (!dx) continue;
      float a1 = float(s1 / double(cols)), a2 = float(s2 / double(cols));
      float* d = dx + i * cols;
      for (int64_t j = 0; j < cols; ++j) {
        float h = (xr[j] - m) * r;
        float dh = g[j] * (gamma ? gamma[j] : 1.f);
        d[j] = r * (dh - a1 - h * a2);
      }
    }
  });
}

void rmsNorm(const float* x, const float* w, float* out, int64_t rows, int64_t cols, float eps, float* rstd) {
  parallelRange(rows, rowGrain(cols), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* xr = x + i * cols;
      double lane[8] = {};
      int64_t j0 = 0;
      for (; j0 + 8 <= cols; j0 += 8)
        for (int l = 0; l < 8; ++l) lane[l] += double(xr[j0 + l]) * xr[j0 + l];
      double s = 0;
      for (int l = 0; l < 8; ++l) s += lane[l];
      for (; j0 < cols; ++j0) s += double(xr[j0]) * xr[j0];
      float r = float(1.0 / std::sqrt(s / double(cols) + double(eps)));
      rstd[i] = r;
      float* o = out + i * cols;
      for (int64_t j = 0; j < cols; ++j) o[j] = xr[j] * r * (w ? w[j] : 1.f);
    }
  });
}

void rmsNormBackward(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw,
                     int64_t rows, int64_t cols) {
  float* targets[1] = {dw};
  rowsWithColumnSums(rows, cols, 1, targets, [&](int64_t b, int64_t e, double* dwAcc) {
    for (int64_t i = b; i < e; ++i) {
      const float* xr = x + i * cols;
      const float* g = dy + i * cols;
      float r = rstd[i];
      double lane[8] = {};  // lanes of Σ dxhat·xhat
      for (int64_t j = 0; j < cols; ++j) {
        float h = xr[j] * r;
        float dh = g[j] * (w ? w[j] : 1.f);
        lane[j & 7] += double(dh) * h;
        dwAcc[j] += double(g[j]) * h;
      }
      double s = 0;
      for (int l = 0; l < 8; ++l) s += lane[l];
      if (!dx) continue;
      float a = float(s / double(cols));
      float* d = dx + i * cols;
      for (int64_t j = 0; j < cols; ++j) {
        float h = xr[j] * r;
        d[j] = r * (g[j] * (w ? w[j] : 1.f) - h * a);
      }
    }
  });
}

void rope(const float* x, float* out, int64_t batch, int64_t heads, int64_t seq, int64_t headDim, int64_t rotaryDim,
          const std::int32_t* positions, double theta, bool inverse) {
  const int64_t half = rotaryDim / 2;
  // cos/sin per (batch, seq) position and frequency, shared by all heads.
  std::vector<float> cs(size_t(batch * seq * half) * 2);
  std::vector<double> invFreq{};
  invFreq.resize(size_t(half));
  for (int64_t i = 0; i < half; ++i) invFreq[size_t(i)] = std::pow(theta, -2.0 * double(i) / double(rotaryDim));
  parallelRange(batch * seq, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, half)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      double pos = positions[t];
      float* c = cs.data() + size_t(t * half) * 2;
      for (int64_t i = 0; i < half; ++i) {
        double ang = pos * invFreq[size_t(i)];
        c[i] = float(std::cos(ang));
        c[half + i] = float(inverse ? -std::sin(ang) : std::sin(ang));
      }
    }
  });
  const int64_t rows = batch * heads * seq;
  parallelRange(rows, rowGrain(headDim), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      int64_t s = row % seq, bi = row / (heads * seq);
      const float* c = cs.data() + size_t((bi * seq + s) * half) * 2;
      const float* sn = c + half;
      const float* xr = x + row * headDim;
      float* o = out + row * headDim;
      for (int64_t i = 0; i < half; ++i) {
        float x1 = xr[i], x2 = xr[i + half];
        o[i] = x1 * c[i] - x2 * sn[i];
        o[i + half] = x2 * c[i] + x1 * sn[i];
      }
      for (int64_t j = rotaryDim; j < headDim; ++j) o[j] = xr[j];
    }
  });
}

void embedding(const float* table, int64_t dim, const std::int32_t* ids, int64_t count, float* out) {
  parallelRange(count, rowGrain(dim), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      std::memcpy(out + t * dim, table + int64_t(ids[t]) * dim, sizeof(float) * size_t(dim));
  });
}

void embeddingBackward(const float* gy, const std::int32_t* ids, int64_t count, float* gtable, int64_t dim) {
  // Threads own disjoint column ranges, so repeated ids never race.
  int64_t grain = std::max<int64_t>(16, kGrain / std::max<int64_t>(1, count));
  parallelRange(dim, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t t = 0; t < count; ++t) {
      float* g = gtable + int64_t(ids[t]) * dim;
      const float* s = gy + t * dim;
      for (int64_t j = c0; j < c1; ++j) g[j] += s[j];
    }
  });
}

void crossEntropy(const float* logits, const std::int32_t* targets, int64_t rows, int64_t vocab, float* losses,
                  float* grad, std::int32_t ignoreIndex) {
  parallelRange(rows, rowGrain(vocab), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* xr = logits + i * vocab;
      std::int32_t t = targets[i];
      if (t == ignoreIndex) {
        losses[i] = 0.f;
        if (grad) std::memset(grad + i * vocab, 0, sizeof(float) * size_t(vocab));
        continue;
      }
      float* g = grad ? grad + i * vocab : rowScratch(vocab);
      double lse = rowLogSumExp(xr, vocab, g);
      losses[i] = float(lse - double(xr[t]));
      if (grad) {
        // g holds exp(x − max); scale to softmax.
        float inv = float(1.0 / std::exp(lse - double(vec::max(xr, vocab))));
        for (int64_t j = 0; j < vocab; ++j) g[j] *= inv;
        g[t] -= 1.f;
      }
    }
  });
}

void klDiv(const float* p, const float* q, int64_t rows, int64_t vocab, float* out, float* gradQ) {
  parallelRange(rows, rowGrain(vocab), [&](int64_t b, int64_t e) {
    std::vector<float> eq(static_cast<size_t>(vocab), 0.f);
    for (int64_t i = b; i < e; ++i) {
      const float* pr = p + i * vocab;
      const float* qr = q + i * vocab;
      float* ep = rowScratch(vocab);
      double lp = rowLogSumExp(pr, vocab, ep), lq = rowLogSumExp(qr, vocab, eq.data());
      // ep, eq hold exp(x − max): rescale to probabilities.
      float sp = float(1.0 / std::exp(lp - double(vec::max(pr, vocab))));
      float sq = float(1.0 / std::exp(lq - double(vec::max(qr, vocab))));
      double lane[8] = {};
      int64_t j = 0;
      auto term = [&](int64_t jj) {
        float P = ep[jj] * sp;
        double d = (double(pr[jj]) - lp) - (double(qr[jj]) - lq);
        return P > 0.f ? double(P) * d : 0.0;
      };
      for (; j + 8 <= vocab; j += 8)
        for (int l = 0; l < 8; ++l) lane[l] += term(j + l);
      double kl = 0;
      for (int l = 0; l < 8; ++l) kl += lane[l];
      for (; j < vocab; ++j) kl += term(j);
      out[i] = float(kl);
      if (gradQ) {
        float* g = gradQ + i * vocab;
        for (int64_t jj = 0; jj < vocab; ++jj) g[jj] = eq[size_t(jj)] * sq - ep[jj] * sp;
      }
    }
  });
}

void topk(const float* x, int64_t rows, int64_t cols, int64_t k, float* values, std::int32_t* indices) {
  parallelRange(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, cols)), [&](int64_t b, int64_t e) {
    std::vector<std::int32_t> idx(static_cast<size_t>(cols), 0);
    for (int64_t i = b; i < e; ++i) {
      const float* xr = x + i * cols;
      std::iota(idx.begin(), idx.end(), 0);
      // Descending; NaN counts as the largest value; ties go to the lower index.
      auto greater = [xr](std::int32_t a, std::int32_t c) {
        float va = xr[a], vc = xr[c];
        bool na = va != va, nc = vc != vc;
        if (na || nc) return na && nc ? a < c : na;
        return va > vc || (va == vc && a < c);
      };
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), greater);
      for (int64_t j = 0; j < k; ++j) {
        indices[i * k + j] = idx[size_t(j)];
        values[i * k + j] = xr[idx[size_t(j)]];
      }
    }
  });
}

void adamw(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWParams& o) {
  // Same arithmetic as torch.optim.AdamW (non-fused): decay, moments, bias-corrected step.
  const float decay = float(1.0 - o.lr * o.weightDecay);
  const double bc1 = 1.0 - std::pow(o.beta1, o.step);
  const double bc2 = 1.0 - std::pow(o.beta2, o.step);
  const float stepSize = float(o.lr / bc1);
  const float bc2Sqrt = float(std::sqrt(bc2));
  const float b1 = float(o.beta1), b2 = float(o.beta2), eps = float(o.eps);
  const float c1 = float(1.0 - o.beta1), c2 = float(1.0 - o.beta2);
  parallelRange(n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float g = grad[i];
      float p = param[i] * decay;
      float mi = b1 * m[i] + c1 * g;
      float vi = b2 * v[i] + c2 * g * g;
      m[i] = mi;
      v[i] = vi;
      param[i] = p - stepSize * mi / (std::sqrt(vi) / bc2Sqrt + eps);
    }
  });
}

}  // namespace ck::cpu
