// The one autograd kernel of every differentiable native op (DESIGN.md §4).
//
// Every differentiable op `vdm_fast::<op>(args...) -> Tensor` comes with a fused backward op of
// one convention:
//
//     <op>_backward(Tensor grad, args..., bool[K] output_mask) -> (Tensor, ... K times)
//
// taking the forward's arguments in the forward's order, where K is the number of differentiable
// arguments and the mask and the gradients follow those arguments in order (a gradient whose
// mask entry is false comes back as an empty tensor). FusedAutograd<Op> is the Autograd-key kernel
// for such an op: it calls the forward below autograd, saves the tensor arguments (and the others,
// e.g. a target name, as IValues) and in backward calls <op>_backward through the dispatcher, so
// torch.compile traces both. An op declares itself with a few lines (csrc/cpu/<op>.cpp):
//
//     struct QSampleOp {
//       static constexpr const char* kName = "vdm_fast::q_sample";
//       static constexpr const char* kBackward = "vdm_fast::q_sample_backward";
//       static constexpr std::array<bool, 4> kDifferentiable = {true, true, true, true};
//       using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
//     };
//     TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("q_sample", &FusedAutograd<QSampleOp>::kernel); }
//
// Autograd is registered in C++ rather than with torch.library.register_autograd: the Python
// autograd kernel costs ~3 µs per call even when no input requires grad, more than the whole op on
// small tensors; and when no input requires grad (sampling loops) no node is built at all.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/all.h>

#include <array>
#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace vdm_fast {

namespace autograd_detail {

template <typename T>
constexpr bool is_tensor_v = std::is_same_v<std::decay_t<T>, at::Tensor>;

template <typename T>
bool requires_grad(const T& arg) {
  if constexpr (is_tensor_v<T>) {
    return arg.defined() && arg.requires_grad();
  } else {
    return false;
  }
}

// A non-tensor argument kept for the backward as an IValue (strings are copied: a string_view
// argument does not outlive the call).
template <typename T>
c10::IValue to_saved(const T& arg) {
  if constexpr (std::is_same_v<std::decay_t<T>, c10::string_view>) {
    return c10::IValue(std::string(arg));
  } else {
    return c10::IValue(arg);
  }
}

template <std::size_t N>
constexpr std::size_t count_true(const std::array<bool, N>& flags) {
  std::size_t n = 0;
  for (bool f : flags) n += f ? 1 : 0;
  return n;
}

}  // namespace autograd_detail

template <typename Op, typename Signature = typename Op::Signature>
struct FusedAutograd;

template <typename Op, typename... Args>
struct FusedAutograd<Op, at::Tensor(Args...)> : public torch::autograd::Function<FusedAutograd<Op, at::Tensor(Args...)>> {
  static constexpr std::size_t kArgs = sizeof...(Args);
  static constexpr std::size_t kGrads = autograd_detail::count_true(Op::kDifferentiable);
  static_assert(Op::kDifferentiable.size() == kArgs, "kDifferentiable needs one entry per forward argument");

  static at::Tensor call(Args... args) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow(Op::kName, "").template typed<at::Tensor(Args...)>();
    return op.call(args...);
  }

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, Args... args) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> tensors;
    std::size_t i = 0;
    auto save = [&](const auto& arg) {
      using T = std::decay_t<decltype(arg)>;
      if constexpr (autograd_detail::is_tensor_v<T>) {
        tensors.push_back(arg);
      } else {
        ctx->saved_data["arg" + std::to_string(i)] = autograd_detail::to_saved(arg);
      }
      ++i;
    };
    (save(args), ...);
    ctx->save_for_backward(tensors);
    return call(args...);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(Op::kBackward, "");
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    // needs_input_grad counts the tensor arguments only (an autograd edge per tensor input).
    static constexpr std::array<bool, kArgs> kIsTensor = {autograd_detail::is_tensor_v<Args>...};
    std::vector<bool> mask;
    for (std::size_t i = 0, edge = 0; i < kArgs; ++i) {
      if (Op::kDifferentiable[i]) mask.push_back(ctx->needs_input_grad(edge));
      edge += kIsTensor[i] ? 1 : 0;
    }
    // The boxed stack: grad (the (B,) upstream gradient of a sum is often an expanded scalar, the
    // kernels take it contiguous), the forward's arguments in order, the mask.
    torch::jit::Stack stack;
    stack.reserve(kArgs + 2);
    stack.emplace_back(grads[0].contiguous());
    std::size_t t = 0, i = 0;
    auto push = [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (autograd_detail::is_tensor_v<T>) {
        stack.emplace_back(saved[t++]);
      } else {
        stack.emplace_back(ctx->saved_data["arg" + std::to_string(i)]);
      }
      ++i;
    };
    (push(std::type_identity<std::decay_t<Args>>{}), ...);
    c10::List<bool> output_mask;
    for (bool want : mask) output_mask.push_back(want);
    stack.emplace_back(std::move(output_mask));
    op.callBoxed(&stack);
    TORCH_INTERNAL_ASSERT(stack.size() == kGrads, Op::kBackward, " returned ", stack.size(), " gradients, not ", kGrads);
    torch::autograd::variable_list out(kArgs);
    std::size_t g = 0;
    for (std::size_t k = 0; k < kArgs; ++k) {
      if (!Op::kDifferentiable[k]) continue;
      if (mask[g]) out[k] = stack[g].toTensor();
      ++g;
    }
    return out;
  }

  // The Autograd-key kernel: an autograd node only when some input requires grad.
  static at::Tensor kernel(Args... args) {
    if (!at::GradMode::is_enabled() || !(autograd_detail::requires_grad(args) || ...)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return call(args...);
    }
    return FusedAutograd::apply(args...);
  }
};

}  // namespace vdm_fast
