#include "pipeline/cpu_thread_env.h"

#include <unistd.h>

#include <cstdlib>
#include <utility>

namespace diffusiond {

void restart_with_cpu_thread_env(char** argv) {
  bool changed = false;
  for (const auto& [name, value] :
       {std::pair{"OMP_WAIT_POLICY", "PASSIVE"}, std::pair{"OPENBLAS_THREAD_TIMEOUT", "4"}}) {
    if (std::getenv(name) == nullptr) {
      ::setenv(name, value, /*overwrite=*/0);
      changed = true;
    }
  }
  if (!changed) return;
  ::execv("/proc/self/exe", argv);  // returns only on failure: run on as we are
}

}  // namespace diffusiond
