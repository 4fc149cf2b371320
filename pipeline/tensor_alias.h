// A tensor of a checkpoint seen under another name: the vocabulary of a renamed view of a
// safetensors index (SafetensorsFile::view) and of the LDM key mapping (ldm_keys.h). A pure
// name -> name (+ slice / reshape / transpose) transform: no bytes are read to build one.
// Thread-safety: value types and a pure function; torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace diffusiond {

struct TensorAlias {
  enum class Op {
    kWhole,       // the source tensor as it is
    kRows,        // rows [part*n/parts, (part+1)*n/parts) of dim 0 (a fused q/k/v split)
    kAs2d,        // a 1x1 convolution kernel [O, I, 1, 1] (or [O, I, 1]) read as [O, I]
    kTransposed,  // a 2-D [A, B] read as [B, A] (OpenCLIP's text_projection)
  };
  std::string name;    // the name the model asks for (diffusers module names)
  std::string source;  // the checkpoint's key
  Op op = Op::kWhole;
  int part = 0;
  int parts = 1;
};

// The shape `alias` has when its source has `source_shape`. Throws std::invalid_argument naming
// the source key when the op does not apply (rows not divisible, kernel not 1x1, not 2-D).
std::vector<std::int64_t> alias_shape(const TensorAlias& alias,
                                      const std::vector<std::int64_t>& source_shape);

}  // namespace diffusiond
