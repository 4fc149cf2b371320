#include "pipeline/skip_init.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>
#include <torch/torch.h>

namespace diffusiond {

namespace {

thread_local bool skipping = false;

at::Tensor& uniform_or_skip(at::Tensor& self, double from, double to,
                            c10::optional<at::Generator> generator) {
  if (skipping) return self;
  c10::impl::ExcludeDispatchKeyGuard real(c10::DispatchKey::AutocastCPU);
  return self.uniform_(from, to, generator);
}

at::Tensor& normal_or_skip(at::Tensor& self, double mean, double std,
                           c10::optional<at::Generator> generator) {
  if (skipping) return self;
  c10::impl::ExcludeDispatchKeyGuard real(c10::DispatchKey::AutocastCPU);
  return self.normal_(mean, std, generator);
}

TORCH_LIBRARY_IMPL(aten, AutocastCPU, m) {
  m.impl("uniform_", TORCH_FN(uniform_or_skip));
  m.impl("normal_", TORCH_FN(normal_or_skip));
}

}  // namespace

SkipRandomInit::SkipRandomInit()
    : was_skipping_(skipping),
      was_excluded_(c10::impl::tls_is_dispatch_key_excluded(c10::DispatchKey::AutocastCPU)) {
  skipping = true;
  c10::impl::tls_set_dispatch_key_excluded(c10::DispatchKey::AutocastCPU, false);
}

SkipRandomInit::~SkipRandomInit() {
  c10::impl::tls_set_dispatch_key_excluded(c10::DispatchKey::AutocastCPU, was_excluded_);
  skipping = was_skipping_;
}

}  // namespace diffusiond
