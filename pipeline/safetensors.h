// safetensors reader (memory-mapped, zero-copy views) and writer.
// Ref: https://github.com/huggingface/safetensors (format: u64 LE header length, JSON header,
// byte buffer). Owner: whoever opens the file; SafetensorsFile is immutable after open(), so any
// thread may read it. Tensors returned by tensor() keep the mapping alive.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace diffusiond {

// Every malformed-file problem; what() names the file and the problem on one line.
class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class StDType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

struct StTensorInfo {
  std::string name;
  StDType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte offsets into the data buffer (after the header)
  std::uint64_t end = 0;
};

std::size_t element_size(StDType dtype);
const char* to_string(StDType dtype);  // "F32", ...

class SafetensorsFile {
 public:
  // Maps the file and validates the whole header. Throws SafetensorsError.
  static std::shared_ptr<const SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const StTensorInfo* find(std::string_view name) const;                 // nullptr if absent
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A CPU tensor viewing the mapped bytes (no copy). Writing to it never reaches the file
  // (private mapping). Throws SafetensorsError naming the key if absent.
  torch::Tensor tensor(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  const std::uint8_t* data_ = nullptr;  // start of the byte buffer
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<const SafetensorsFile> self_;
};

torch::ScalarType to_torch(StDType dtype);
StDType from_torch(torch::ScalarType type);  // throws std::invalid_argument if unsupported

// Writes tensors (any device/dtype supported above; made contiguous on CPU) in the order given.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace diffusiond
