// Shared helpers of the UNet/VAE tests.
#pragma once

#include <filesystem>
#include <string>
#include <utility>

#include <ATen/record_function.h>

#include <torch/torch.h>

namespace diffusiond::test {

inline std::filesystem::path tiny_sd1() {
  return std::filesystem::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
}

// ||actual - expected|| / ||expected|| in float64.
inline double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kFloat64).cpu();
  auto e = expected.to(torch::kFloat64).cpu();
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

// Counts the calls of one ATen operator (e.g. "aten::linear") made on this thread while alive;
// one counter per thread at a time.
class OpCalls {
 public:
  explicit OpCalls(std::string op) {
    target() = std::move(op);
    count() = 0;
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback([](const at::RecordFunction& fn)
                                       -> std::unique_ptr<at::ObserverContext> {
          if (fn.name() == target()) ++count();
          return nullptr;
        }).scopes({at::RecordScope::FUNCTION}));
  }
  ~OpCalls() { at::removeCallback(handle_); }
  OpCalls(const OpCalls&) = delete;
  OpCalls& operator=(const OpCalls&) = delete;
  // The calls since the last take().
  int take() { return std::exchange(count(), 0); }

 private:
  static std::string& target() {
    static thread_local std::string name;
    return name;
  }
  static int& count() {
    static thread_local int n = 0;
    return n;
  }
  at::CallbackHandle handle_;
};

}  // namespace diffusiond::test
