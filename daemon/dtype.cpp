#include "daemon/dtype.h"

#include <stdexcept>

namespace diffusiond {

std::string resolve_dtype(const std::string& option, bool on_cuda) {
  if (option == "auto" || option.empty()) return on_cuda ? "fp16" : "fp32";
  if (option == "fp32" || option == "float32") return "fp32";
  if (option == "fp16" || option == "float16" || option == "half") return "fp16";
  if (option == "bf16" || option == "bfloat16") return "bf16";
  throw std::invalid_argument("--dtype: unknown '" + option + "' (use auto, fp32, fp16 or bf16)");
}

}  // namespace diffusiond
