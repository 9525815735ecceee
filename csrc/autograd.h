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
//     TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { register_autograd<QSampleOp>(m); }
//
// Autograd is registered in C++ rather than with torch.library.register_autograd: the Python
// autograd kernel costs ~3 µs per call even when no input requires grad, more than the whole op on
// small tensors; and when no input requires grad (sampling loops) no node is built at all.
//
// Higher order (DESIGN.md §4.12). The fused kernels compute first derivatives only. Forward-mode
// AD (torch.func.jvp, torch.autograd.forward_ad) and a backward that must itself be differentiable
// (create_graph=True: double backward, gradient penalties) go to the op's composite twin
// `<op>_composite` / `<op>_backward_composite`: the reference formula on the same arguments,
// registered by vdm_fast/ops/_autodiff.py as CompositeImplicitAutograd, which PyTorch
// differentiates in every mode. The first-order path never leaves the fused kernels:
//  - FusedAutograd<Op>::kernel sends a call whose inputs carry a forward-mode tangent, or that
//    needs an autograd node inside a torch.func transform (torch.func.grad, vjp: PyTorch runs no
//    C++ autograd Function there), to <op>_composite;
//  - BackwardAutograd (the Autograd kernel of <op>_backward) sends a backward called with grad
//    mode on and an input that requires grad (the backward of create_graph=True), or with a
//    tangent, to <op>_backward_composite, and every other call to the fused backward.
#pragma once

#include <ATen/FuncTorchTLS.h>
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

// Whether a forward-mode tangent rides on the argument. torch.autograd.forward_ad and torch.func.jvp
// both keep it at level 0 of the tensor the kernel sees (functorch wraps a tensor once per
// transform level, each wrapper with its own level-0 tangent), as ATen's own kernels read it.
inline bool has_tangent(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
inline bool has_tangent(const std::optional<at::Tensor>& t) { return t.has_value() && has_tangent(*t); }
template <typename T>
bool has_tangent(const T&) {
  return false;
}

// Whether a torch.func transform (grad, vjp, vmap, ...) is active, where PyTorch refuses C++
// autograd Functions ("cannot use C++ torch::autograd::Function with functorch transforms"): a
// node needed there is built by the composite twin instead. The question is asked exactly as
// Function::apply asks it (the layer stack itself is in a header extensions cannot include); the
// thread's functorch state exists only once torch.func was used in it, so this is a null check
// everywhere else.
inline bool in_functorch_transform() {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return false;
  try {
    tls->checkSupportsCppAutogradFunction();
    return false;
  } catch (const c10::Error&) {
    return true;
  }
}

// The composite twin `<name>_composite` of an op (see the top of this file), looked up on first
// use: vdm_fast/ops/_autodiff.py registers it when `import vdm_fast` loads this library.
inline c10::OperatorHandle composite_of(const std::string& name, const char* why) {
  const auto handle = c10::Dispatcher::singleton().findSchema({name + "_composite", ""});
  TORCH_CHECK(handle.has_value(), name, ": ", why, " needs ", name,
              "_composite, which `import vdm_fast` registers; import vdm_fast before calling torch.ops.vdm_fast ops "
              "under this transform");
  return *handle;
}

}  // namespace autograd_detail

// The Autograd-key kernel of every fused backward `<op>_backward` (boxed: one function for every
// signature). The first-order backward (grad mode off, as the engine runs it without
// create_graph) goes to the fused kernel below autograd; a call that must be differentiated goes
// to the composite twin.
inline void backward_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const std::size_t n = op.schema().arguments().size();
  const bool grad_mode = at::GradMode::is_enabled();
  bool differentiate = false;
  for (auto it = stack->end() - static_cast<std::ptrdiff_t>(n); it != stack->end(); ++it) {
    if (!it->isTensor()) continue;
    const at::Tensor& t = it->toTensor();
    differentiate = differentiate || (grad_mode && t.defined() && t.requires_grad()) || autograd_detail::has_tangent(t);
  }
  if (differentiate) {
    autograd_detail::composite_of(op.schema().name(), "a differentiable backward (create_graph=True, forward mode)")
        .callBoxed(stack);
    return;
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  op.callBoxed(stack);
}

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

  // The Autograd-key kernel: an autograd node only when some input requires grad; the composite
  // twin when an input carries a forward-mode tangent.
  static at::Tensor kernel(Args... args) {
    if ((autograd_detail::has_tangent(args) || ...)) {
      return autograd_detail::composite_of(Op::kName, "forward-mode AD")
          .template typed<at::Tensor(Args...)>()
          .call(args...);
    }
    if (!at::GradMode::is_enabled() || !(autograd_detail::requires_grad(args) || ...)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return call(args...);
    }
    if (autograd_detail::in_functorch_transform()) {
      return autograd_detail::composite_of(Op::kName, "torch.func.grad / vjp")
          .template typed<at::Tensor(Args...)>()
          .call(args...);
    }
    return FusedAutograd::apply(args...);
  }
};

// The Autograd kernels of a differentiable op and of its fused backward:
//     TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<QSampleOp>(m); }
template <typename Op>
void register_autograd(torch::Library& m) {
  m.impl(Op::kName, &FusedAutograd<Op>::kernel);
  m.impl(Op::kBackward, torch::CppFunction::makeFromBoxedFunction<&backward_autograd>());
}

}  // namespace vdm_fast
