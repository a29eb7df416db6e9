// ProxAdamW's CPU step in three vectorised passes (see sparsemtl/sparsity/native_step.py).
//
// Every tensor is a contiguous float32 (rows, cols) matrix whose groups are blocks of `width`
// neighbouring columns (a conv weight (O, I, k, k) with input-channel groups is (O, I k k), width
// k k); per-group values (tau, theta, zero) come and go as one float per group. Each pass streams the rows
// in order, vectorised across the columns, and keeps per-column accumulators: the rows are split
// between the threads, each with accumulators of its own, summed at the end.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

struct Scalars {
  float decay, beta1c, beta2, beta2c, step_size, adam_scale, metric_scale, eps;
};

// Runs body(r0, r1, slot) over row ranges, one accumulator slot per range; returns the slots.
template <typename Body>
std::vector<std::vector<float>> over_rows(int64_t rows, int64_t width, const std::vector<float>& init, Body body) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<std::vector<float>> slots(parts);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      std::vector<float>& acc = slots[p];
      acc.resize(init.size() * width);
      for (size_t k = 0; k < init.size(); ++k) std::fill(acc.begin() + k * width, acc.begin() + (k + 1) * width, init[k]);
      body(rows * p / parts, rows * (p + 1) / parts, acc.data());
    }
  });
  return slots;
}

float fold(char op, float a, float b) { return op == 's' ? a + b : op == '>' ? std::max(a, b) : std::min(a, b); }

// Folds the slots' per-column values into per-group values (groups of `width` neighbouring
// columns): sums, maxima or minima per `ops` ('s', '>', '<'), a (len(ops), cols / width) tensor.
torch::Tensor combine(const std::vector<std::vector<float>>& slots, const char* ops, int64_t cols, int64_t width) {
  const int64_t n = std::strlen(ops), groups = cols / width;
  auto out = torch::empty({n, groups}, torch::dtype(torch::kFloat32));
  float* o = out.data_ptr<float>();
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t q = 0; q < groups; ++q) {
      float value = slots[0][k * cols + q * width];
      for (size_t p = 0; p < slots.size(); ++p) {
        const float* a = slots[p].data() + k * cols + q * width;
        for (int64_t j = (p == 0 ? 1 : 0); j < width; ++j) value = fold(ops[k], value, a[j]);
      }
      o[k * groups + q] = value;
    }
  }
  return out;
}

// One value per group spread over its `width` columns.
std::vector<float> spread(torch::Tensor per_group, int64_t width) {
  const float* a = per_group.data_ptr<float>();
  std::vector<float> out(per_group.numel() * width);
  for (int64_t q = 0; q < per_group.numel(); ++q) std::fill(out.begin() + q * width, out.begin() + (q + 1) * width, a[q]);
  return out;
}

}  // namespace

// AdamW's update of x, m, v in place (torch's formula), then per group: sum (d x)^2, max d,
// min d, sum x^2, max v, and the Newton sums S = sum (x u)^2 and T = sum (x u)^2 u with
// u = 1 / (theta + tau / d), d = sqrt(v) * metric_scale + eps.
torch::Tensor update_and_test(torch::Tensor x, torch::Tensor g, torch::Tensor m, torch::Tensor v,
                              std::vector<double> s, torch::Tensor tau, torch::Tensor theta, int64_t width) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const Scalars c{float(s[0]), float(s[1]), float(s[2]), float(s[3]), float(s[4]), float(s[5]), float(s[6]), float(s[7])};
  float* X = x.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  float* M = m.data_ptr<float>();
  float* V = v.data_ptr<float>();
  const std::vector<float> tau_cols = spread(tau, width), theta_cols = spread(theta, width);
  const float* TAU = tau_cols.data();
  const float* TH = theta_cols.data();
  const std::vector<float> init{0.f, -INFINITY, INFINITY, 0.f, -INFINITY, 0.f, 0.f};
  auto slots = over_rows(rows, cols, init, [&](int64_t r0, int64_t r1, float* acc) {
    float* __restrict a0 = acc;
    float* __restrict a1 = acc + cols;
    float* __restrict a2 = acc + 2 * cols;
    float* __restrict a3 = acc + 3 * cols;
    float* __restrict a4 = acc + 4 * cols;
    float* __restrict a5 = acc + 5 * cols;
    float* __restrict a6 = acc + 6 * cols;
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict xr = X + r * cols;
      const float* __restrict gr = G + r * cols;
      float* __restrict mr = M + r * cols;
      float* __restrict vr = V + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const float gj = gr[j];
        const float mj = mr[j] + c.beta1c * (gj - mr[j]);
        const float vj = vr[j] * c.beta2 + c.beta2c * gj * gj;
        const float root = std::sqrt(vj);
        const float xj = xr[j] * c.decay + c.step_size * mj / (root * c.adam_scale + c.eps);
        mr[j] = mj;
        vr[j] = vj;
        xr[j] = xj;
        const float d = root * c.metric_scale + c.eps;
        const float dx = d * xj;
        const float u = d / (TH[j] * d + TAU[j]);
        const float xu = xj * u;
        const float w = xu * xu;
        a0[j] += dx * dx;
        a1[j] = a1[j] > d ? a1[j] : d;
        a2[j] = a2[j] < d ? a2[j] : d;
        a3[j] += xj * xj;
        a4[j] = a4[j] > vj ? a4[j] : vj;
        a5[j] += w;
        a6[j] += w * u;
      }
    }
  });
  return combine(slots, "s><s>ss", cols, width);
}

// Per group the Newton sums S and T (as above) at theta.
torch::Tensor newton_sums(torch::Tensor x, torch::Tensor v, double metric_scale, double eps, torch::Tensor tau,
                          torch::Tensor theta, int64_t width) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const float ms = metric_scale, fe = eps;
  const float* X = x.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const std::vector<float> tau_cols = spread(tau, width), theta_cols = spread(theta, width);
  const float* TAU = tau_cols.data();
  const float* TH = theta_cols.data();
  auto slots = over_rows(rows, cols, {0.f, 0.f}, [&](int64_t r0, int64_t r1, float* acc) {
    float* __restrict a0 = acc;
    float* __restrict a1 = acc + cols;
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict xr = X + r * cols;
      const float* __restrict vr = V + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const float d = std::sqrt(vr[j]) * ms + fe;
        const float u = d / (TH[j] * d + TAU[j]);
        const float xu = xr[j] * u;
        const float w = xu * xu;
        a0[j] += w;
        a1[j] += w * u;
      }
    }
  });
  return combine(slots, "ss", cols, width);
}

// x <- 0 where zero[column] != 0, else x * theta d / (theta d + tau): the prox of a solved group
// of norm theta (tau = 0 and theta = 1 leave x as it is).
void shrink(torch::Tensor x, torch::Tensor v, double metric_scale, double eps, torch::Tensor tau, torch::Tensor theta,
            torch::Tensor zero, int64_t width) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const float ms = metric_scale, fe = eps;
  float* X = x.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const std::vector<float> tau_cols = spread(tau, width), theta_cols = spread(theta, width), zero_cols = spread(zero, width);
  const float* TAU = tau_cols.data();
  const float* TH = theta_cols.data();
  const float* Z = zero_cols.data();
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict xr = X + r * cols;
      const float* __restrict vr = V + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const float d = std::sqrt(vr[j]) * ms + fe;
        const float td = TH[j] * d;
        const float shrunk = xr[j] * (td / (td + TAU[j]));
        xr[j] = Z[j] != 0.f ? 0.f : shrunk;
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("update_and_test", &update_and_test);
  module.def("newton_sums", &newton_sums);
  module.def("shrink", &shrink);
}
