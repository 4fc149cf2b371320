// Fuzz target: a whole safetensors file in memory through parse_safetensors_header
// (pipeline/media/safetensors_map.h: the header length, the JSON header, each tensor's dtype,
// shape and data_offsets, __metadata__, overlaps), what SafetensorsMap::open() runs on a mapped
// model file. SafetensorsError is the answer to a bad file; any other exception or a crash is a
// bug. An accepted header must describe only bytes inside the file: each tensor's first and
// last byte are read (AddressSanitizer sees a read past the input).
#include <cstdint>
#include <cstdlib>

#include "pipeline/media/safetensors_map.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace diffusiond;
  SafetensorsHeader header;
  try {
    header = parse_safetensors_header("fuzz.safetensors", data, size);
  } catch (const SafetensorsError&) {
    return 0;
  }
  if (header.data_offset < 8 || header.data_offset > size) std::abort();
  const std::uint8_t* buffer = data + header.data_offset;
  const std::uint64_t buffer_size = size - header.data_offset;
  volatile std::uint8_t sink = 0;
  for (std::size_t i = 0; i < header.tensors.size(); ++i) {
    const auto& t = header.tensors[i];
    if (i > 0 && !(header.tensors[i - 1].name < t.name)) std::abort();  // sorted, unique
    if (t.begin > t.end || t.end > buffer_size) std::abort();
    std::uint64_t bytes = element_size(t.dtype);
    for (auto d : t.shape) bytes *= static_cast<std::uint64_t>(d);
    if (bytes != t.end - t.begin) std::abort();
    if (t.end > t.begin) sink = sink + buffer[t.begin] + buffer[t.end - 1];
    StDType again;
    if (!parse_dtype(to_string(t.dtype), again) || again != t.dtype) std::abort();
  }
  return 0;
}
