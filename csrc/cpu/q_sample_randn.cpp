// q_sample_randn: its schema and autograd, and on the CPU noise n drawn in-kernel (csrc/cpu/noise.h) and
// z = alpha[b] * x0 + sigma[b] * n, one pass. Returns (z, n). The backward is q_sample's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "autograd.h"
#include "common.h"
#include "cpu/noise.h"
#include "cpu/per_sample.h"
#include "noise_args.h"
#include "q_sample.h"
#include <torch/all.h>
#include <array>

namespace vdm_fast {
namespace cpu {
namespace {

// The noise is rounded to the data dtype first, so z equals q_sample(x0, alpha, sigma, n) for the
// returned n exactly.
template <typename scalar_t, typename acc_t>
void q_sample_randn_segment(scalar_t* __restrict z, scalar_t* __restrict noise, const scalar_t* __restrict x0,
                            const float* __restrict n32, acc_t alpha, acc_t sigma, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t ni = static_cast<scalar_t>(n32[i]);
    noise[i] = ni;
    z[i] = static_cast<scalar_t>(alpha * static_cast<acc_t>(x0[i]) + sigma * static_cast<acc_t>(ni));
  }
}

std::tuple<at::Tensor, at::Tensor> q_sample_randn_cpu(const at::Tensor& x0, const at::Tensor& alpha,
                                                      const at::Tensor& sigma, const at::Tensor& seed,
                                                      int64_t offset) {
  const QSampleRandnInputs in = prepare_q_sample_randn(x0, alpha, sigma, seed);
  const at::Tensor &z = in.z, &noise = in.noise, &x = in.x;
  if (z.numel() == 0) return {z, noise};
  const int64_t B = in.B, D = in.D;
  const uint64_t s = seed_value(seed), off = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_randn_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    scalar_t* np = noise.mutable_data_ptr<scalar_t>();
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    for_each_segment(B, D, [&](int64_t b, int64_t begin, int64_t end) {
      alignas(64) float buf[kNoiseTile];
      for (int64_t i = begin; i < end; i += kNoiseTile) {
        const int64_t len = std::min(kNoiseTile, end - i);
        philox_normals(s, off, i, len, buf);  // element i's noise, whatever the split
        with_cpu_isa([&] { q_sample_randn_segment<scalar_t, acc>(zp + i, np + i, xp + i, buf, ap[b], sp[b], len); });
      }
    });
  });
  return {z, noise};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) { m.impl("q_sample_randn", &vdm_fast::cpu::q_sample_randn_cpu); }

// --- schema and autograd ----------------------------------------------------------------------
// The one op whose autograd is not csrc/autograd.h's template: it returns two tensors, and its
// backward is q_sample_backward with the returned noise (a constant: no gradient flows to it or to
// the seed), not an op of its own.

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("q_sample_randn(Tensor x0, Tensor alpha, Tensor sigma, Tensor seed, int offset) -> (Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> q_sample_randn_call(const at::Tensor& x0, const at::Tensor& alpha,
                                                       const at::Tensor& sigma, const at::Tensor& seed,
                                                       int64_t offset) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::q_sample_randn", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(x0, alpha, sigma, seed, offset);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> q_sample_backward_call(
    const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
    const at::Tensor& noise, std::array<bool, 4> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("vdm_fast::q_sample_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              std::array<bool, 4>)>();
  return op.call(grad, x0, alpha, sigma, noise, mask);
}

class QSampleRandn : public torch::autograd::Function<QSampleRandn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& alpha,
                               const at::Tensor& sigma, const at::Tensor& seed, int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [z, noise] = q_sample_randn_call(x0, alpha, sigma, seed, offset);
    ctx->save_for_backward({x0, alpha, sigma, noise});
    ctx->mark_non_differentiable({noise});
    return {z, noise};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    // q_sample_backward's mask: x0, alpha, sigma, noise (the noise is a constant).
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                                      false};
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [gx, ga, gs, gn] = q_sample_backward_call(grads[0], saved[0], saved[1], saved[2], saved[3], mask);
    return {mask[0] ? gx : at::Tensor(), mask[1] ? ga : at::Tensor(), mask[2] ? gs : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> q_sample_randn_autograd(const at::Tensor& x0, const at::Tensor& alpha,
                                                           const at::Tensor& sigma, const at::Tensor& seed,
                                                           int64_t offset) {
  using autograd_detail::has_tangent;
  const bool needs_node = at::GradMode::is_enabled() && (x0.requires_grad() || alpha.requires_grad() || sigma.requires_grad());
  // Forward mode, or a node inside a torch.func transform: the composite twin (csrc/autograd.h).
  if (has_tangent(x0) || has_tangent(alpha) || has_tangent(sigma) ||
      (needs_node && autograd_detail::in_functorch_transform())) {
    return autograd_detail::composite_of("vdm_fast::q_sample_randn", "forward-mode AD")
        .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, int64_t)>()
        .call(x0, alpha, sigma, seed, offset);
  }
  if (!needs_node) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return q_sample_randn_call(x0, alpha, sigma, seed, offset);
  }
  const variable_list out = QSampleRandn::apply(x0, alpha, sigma, seed, offset);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("q_sample_randn", &vdm_fast::q_sample_randn_autograd); }
