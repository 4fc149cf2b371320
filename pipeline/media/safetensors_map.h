// A safetensors file without LibTorch: the memory mapping and its validated header (dtype names,
// shapes, byte offsets into the data buffer, __metadata__). pipeline/safetensors.h makes
// torch::Tensors over it and writes files.
// Ref: https://github.com/huggingface/safetensors (format: u64 LE header length, JSON header,
// byte buffer). Owner: whoever opens the file; SafetensorsMap is immutable after open(), so any
// thread may read it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

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
// The dtype a header names ("F32", ...); false for a name the format does not define.
bool parse_dtype(std::string_view name, StDType& out);

// The validated header of a safetensors file held in memory (`bytes`: the whole file, `size`
// bytes): everything SafetensorsMap::open() checks, without a file (the fuzz target calls it).
// `path` only names the file in error messages. Throws SafetensorsError.
struct SafetensorsHeader {
  std::uint64_t data_offset = 0;      // where the byte buffer starts: 8 + the JSON's length
  std::vector<StTensorInfo> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
};
SafetensorsHeader parse_safetensors_header(const std::filesystem::path& path,
                                           const std::uint8_t* bytes, std::uint64_t size);

class SafetensorsMap {
 public:
  // Maps the file and validates the whole header (parse_safetensors_header). Throws
  // SafetensorsError.
  static std::shared_ptr<const SafetensorsMap> open(const std::filesystem::path& path);
  ~SafetensorsMap();
  SafetensorsMap(const SafetensorsMap&) = delete;
  SafetensorsMap& operator=(const SafetensorsMap&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const StTensorInfo* find(std::string_view name) const;                 // nullptr if absent
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The first byte of a tensor's data (info.end - info.begin bytes), valid while this object
  // lives. Writable because the mapping is private: writes never reach the file.
  std::uint8_t* data(const StTensorInfo& info) const { return data_ + info.begin; }

  // Drops the whole pages of [p, p+n) from the process's resident set when the range lies in
  // the mapping of a SafetensorsMap alive now, and says whether it did. The pages' contents
  // stay the file's: a later read faults them in again from the file. Only for bytes nobody
  // wrote (weights used in place are read-only in use, pipeline/weights.cpp): a page a write
  // had copied would be lost. Any thread.
  static bool release_resident_pages(const void* p, std::size_t n);

 private:
  SafetensorsMap() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  std::uint8_t* data_ = nullptr;  // start of the byte buffer
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace diffusiond
