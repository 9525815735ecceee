// Schema of the q_sample ops (DESIGN.md §4.1). Kernels: csrc/cpu/q_sample.cpp,
// csrc/cuda/q_sample.cu. Fake kernels and autograd: vdm_fast/_native.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("q_sample(Tensor x0, Tensor alpha, Tensor sigma, Tensor noise) -> Tensor");
  // One pass over grad, x0 and noise: grad_x0 = alpha*grad, grad_noise = sigma*grad,
  // grad_alpha[b] = sum(grad*x0), grad_sigma[b] = sum(grad*noise). Outputs whose
  // output_mask entry is false come back as empty tensors.
  m.def(
      "q_sample_backward(Tensor grad, Tensor x0, Tensor noise, Tensor alpha, Tensor sigma, bool[4] output_mask)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
}
