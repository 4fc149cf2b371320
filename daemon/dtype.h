// The one dtype parser: "--dtype" values (auto, fp32/float32, fp16/float16/half,
// bf16/bfloat16) to the canonical "fp32", "fp16" or "bf16". Torch-free; the LibTorch type of a
// canonical name is pipeline_params.h's scalar_type(). Pure function; any thread.
#pragma once

#include <string>

namespace diffusiond {

// "auto" or "": fp16 on CUDA, fp32 on the CPU. Throws std::invalid_argument naming the value.
std::string resolve_dtype(const std::string& option, bool on_cuda);

}  // namespace diffusiond
