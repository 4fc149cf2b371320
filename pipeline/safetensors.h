// safetensors reader (memory-mapped, zero-copy torch::Tensor views) and writer. The mapping and
// the header checks are pipeline/media/safetensors_map.h's (torch-free); this adds the tensors.
// Owner: whoever opens the file; SafetensorsFile is immutable after open(), so any thread may
// read it. Tensors returned by tensor() keep the mapping alive.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "pipeline/media/safetensors_map.h"
#include "pipeline/tensor_alias.h"

namespace diffusiond {

class SafetensorsFile {
 public:
  // Maps the file and validates the whole header. Throws SafetensorsError. A file already open
  // in this process (the same inode, size and mtime) is shared, not mapped again.
  static std::shared_ptr<const SafetensorsFile> open(const std::filesystem::path& path);
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return map_->path(); }
  // Sorted by name. For a view: the aliases' names, dtypes and shapes (begin/end: the source's).
  const std::vector<StTensorInfo>& tensors() const { return view_ ? index_ : map_->tensors(); }
  const StTensorInfo* find(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return map_->metadata(); }

  // A CPU tensor viewing the mapped bytes (no copy; a view's slices, reshapes and transposes
  // are views too). Writing to it never reaches the file (private mapping). Throws
  // SafetensorsError naming the key if absent.
  torch::Tensor tensor(std::string_view name) const;

  // The same mapping under other names (ldm_keys.h makes the aliases of a single-file
  // checkpoint's components): tensors(), find() and tensor() answer in the aliases' names and
  // shapes. `label` names the view in messages. Throws SafetensorsError naming an alias whose
  // source is absent or does not fit its op.
  std::shared_ptr<const SafetensorsFile> view(std::vector<TensorAlias> aliases,
                                              std::string label) const;
  bool is_view() const { return view_; }
  // "PATH" or, for a view, "PATH (LABEL)": what error messages name.
  std::string describe() const;
  // For a view, the file's own key behind `name` ("" if none or not a view).
  std::string source_of(std::string_view name) const;

 private:
  explicit SafetensorsFile(std::shared_ptr<const SafetensorsMap> map) : map_(std::move(map)) {}
  std::shared_ptr<const SafetensorsMap> map_;
  bool view_ = false;
  std::vector<StTensorInfo> index_;   // view: sorted by name
  std::vector<TensorAlias> aliases_;  // view: parallel to index_
  std::string label_;
};

torch::ScalarType to_torch(StDType dtype);
StDType from_torch(torch::ScalarType type);  // throws std::invalid_argument if unsupported

// Writes tensors (any device/dtype supported above; made contiguous on CPU) in the order given.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace diffusiond
