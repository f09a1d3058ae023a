// LibTorch's own backward kernels (convolution, batch norm) for ops whose backward burn-tch 0.21
// leaves to burn's generic decompositions, exposed with a C ABI to `clip_model::libtorch` (built
// only with the `tch` feature). Tensors cross as `at::Tensor*`, the handles tch's C API uses; results are new handles
// owned by the caller. Errors are returned as malloc'd messages, never thrown across the ABI.

#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/native_batch_norm_backward.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>

namespace {

// Runs `body`, turning any exception into a malloc'd message (null when it succeeds).
template <class Body>
char *guarded(const char *what, Body body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  } catch (...) {
    return strdup(what);
  }
}

}  // namespace

extern "C" {

char *clip_libtorch_conv2d_backward(const at::Tensor *grad_output, const at::Tensor *input,
                                    const at::Tensor *weight, const int64_t *stride,
                                    const int64_t *padding, const int64_t *dilation,
                                    int64_t groups, int want_input, int want_weight,
                                    at::Tensor **grad_input, at::Tensor **grad_weight) {
  *grad_input = nullptr;
  *grad_weight = nullptr;
  return guarded("unknown C++ exception in LibTorch's convolution backward", [&] {
    const std::array<bool, 3> mask = {want_input != 0, want_weight != 0, false};
    const int64_t no_output_padding[2] = {0, 0};
    auto grads = at::convolution_backward(
        *grad_output, *input, *weight, std::nullopt, at::IntArrayRef(stride, 2),
        at::IntArrayRef(padding, 2), at::IntArrayRef(dilation, 2), /*transposed=*/false,
        at::IntArrayRef(no_output_padding, 2), groups, mask);
    if (want_input) *grad_input = new at::Tensor(std::get<0>(grads));
    if (want_weight) *grad_weight = new at::Tensor(std::get<1>(grads));
  });
}

char *clip_libtorch_batch_norm_backward(const at::Tensor *grad_output, const at::Tensor *input,
                                       const at::Tensor *weight, const at::Tensor *save_mean,
                                       const at::Tensor *save_invstd, double eps, int want_input,
                                       int want_weight, int want_bias, at::Tensor **grad_input,
                                       at::Tensor **grad_weight, at::Tensor **grad_bias) {
  *grad_input = nullptr;
  *grad_weight = nullptr;
  *grad_bias = nullptr;
  return guarded("unknown C++ exception in LibTorch's batch norm backward", [&] {
    const std::array<bool, 3> mask = {want_input != 0, want_weight != 0, want_bias != 0};
    auto grads = at::native_batch_norm_backward(*grad_output, *input, *weight, std::nullopt,
                                                std::nullopt, *save_mean, *save_invstd,
                                                /*train=*/true, eps, mask);
    if (want_input) *grad_input = new at::Tensor(std::get<0>(grads));
    if (want_weight) *grad_weight = new at::Tensor(std::get<1>(grads));
    if (want_bias) *grad_bias = new at::Tensor(std::get<2>(grads));
  });
}

void clip_libtorch_free_message(char *message) { free(message); }

}  // extern "C"
