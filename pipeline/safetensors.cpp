#include "pipeline/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <mutex>

#include <fstream>

#include <nlohmann/json.hpp>

namespace diffusiond {

torch::ScalarType to_torch(StDType dtype) {
  switch (dtype) {
    case StDType::F64:
      return torch::kFloat64;
    case StDType::F32:
      return torch::kFloat32;
    case StDType::F16:
      return torch::kFloat16;
    case StDType::BF16:
      return torch::kBFloat16;
    case StDType::I64:
      return torch::kInt64;
    case StDType::I32:
      return torch::kInt32;
    case StDType::I16:
      return torch::kInt16;
    case StDType::I8:
      return torch::kInt8;
    case StDType::U8:
      return torch::kUInt8;
    case StDType::BOOL:
      return torch::kBool;
  }
  return torch::kFloat32;
}

StDType from_torch(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat64:
      return StDType::F64;
    case torch::kFloat32:
      return StDType::F32;
    case torch::kFloat16:
      return StDType::F16;
    case torch::kBFloat16:
      return StDType::BF16;
    case torch::kInt64:
      return StDType::I64;
    case torch::kInt32:
      return StDType::I32;
    case torch::kInt16:
      return StDType::I16;
    case torch::kInt8:
      return StDType::I8;
    case torch::kUInt8:
      return StDType::U8;
    case torch::kBool:
      return StDType::BOOL;
    default:
      throw std::invalid_argument(std::string("safetensors: unsupported dtype ") +
                                  c10::toString(type));
  }
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  // One mapping per file per process, shared while anything holds it (a SafetensorsFile or a
  // tensor made from it: in-place weights keep it for the replica's lifetime; the cpu*N
  // replicas of a model use the same pages, at the same addresses: the process's RSS counts
  // them once). A file replaced or modified since (another inode, size or mtime) maps anew.
  struct Identity {
    dev_t dev;
    ino_t ino;
    off_t size;
    std::int64_t mtime_ns;
    bool operator==(const Identity& o) const {
      return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns;
    }
  };
  struct Entry {  // the mapping, which the tensors made from it keep alive
    Identity identity;
    std::weak_ptr<const SafetensorsMap> map;
  };
  static std::mutex mu;
  static std::map<std::string, Entry> open_files;
  struct stat st {};
  std::error_code ec;
  const auto canonical = std::filesystem::weakly_canonical(path, ec);
  if (ec || ::stat(canonical.c_str(), &st) != 0)  // let the map report a missing file
    return std::shared_ptr<const SafetensorsFile>(new SafetensorsFile(SafetensorsMap::open(path)));
  const Identity identity{st.st_dev, st.st_ino, st.st_size,
                          std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  std::lock_guard lock(mu);
  for (auto it = open_files.begin(); it != open_files.end();)  // forget the unmapped ones
    it = it->second.map.expired() ? open_files.erase(it) : std::next(it);
  auto& entry = open_files[canonical.string()];
  std::shared_ptr<const SafetensorsMap> map = entry.map.lock();
  if (!map || !(entry.identity == identity)) {
    map = SafetensorsMap::open(path);
    entry = {identity, map};
  }
  return std::shared_ptr<const SafetensorsFile>(new SafetensorsFile(std::move(map)));
}

namespace {

torch::Tensor mapped_tensor(const std::shared_ptr<const SafetensorsMap>& map,
                            const StTensorInfo& info) {
  std::shared_ptr<const SafetensorsMap> keep = map;
  std::uint8_t* ptr = map->data(info);
  auto options = torch::TensorOptions().dtype(to_torch(info.dtype)).device(torch::kCPU);
  if (info.end == info.begin) return torch::empty(info.shape, options);
  return torch::from_blob(
      ptr, info.shape, [keep](void*) mutable { keep.reset(); }, options);
}

const StTensorInfo* find_sorted(const std::vector<StTensorInfo>& index, std::string_view name) {
  auto it = std::lower_bound(index.begin(), index.end(), name,
                             [](const StTensorInfo& a, std::string_view n) { return a.name < n; });
  return it != index.end() && it->name == name ? &*it : nullptr;
}

}  // namespace

const StTensorInfo* SafetensorsFile::find(std::string_view name) const {
  return view_ ? find_sorted(index_, name) : map_->find(name);
}

torch::Tensor SafetensorsFile::tensor(std::string_view name) const {
  const StTensorInfo* info = find(name);
  if (info == nullptr) {
    throw SafetensorsError(describe() + ": no tensor named '" + std::string(name) + "'");
  }
  if (!view_) return mapped_tensor(map_, *info);
  const TensorAlias& alias = aliases_[static_cast<std::size_t>(info - index_.data())];
  torch::Tensor source = mapped_tensor(map_, *map_->find(alias.source));
  switch (alias.op) {
    case TensorAlias::Op::kWhole:
      return source;
    case TensorAlias::Op::kRows: {
      const int64_t rows = source.size(0) / alias.parts;
      return source.narrow(0, rows * alias.part, rows);
    }
    case TensorAlias::Op::kAs2d:
      return source.reshape(info->shape);
    case TensorAlias::Op::kTransposed:
      return source.t();
  }
  return source;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::view(std::vector<TensorAlias> aliases,
                                                             std::string label) const {
  std::sort(aliases.begin(), aliases.end(),
            [](const TensorAlias& a, const TensorAlias& b) { return a.name < b.name; });
  std::shared_ptr<SafetensorsFile> out(new SafetensorsFile(map_));
  out->view_ = true;
  out->label_ = std::move(label);
  for (const auto& alias : aliases) {
    const StTensorInfo* source = map_->find(alias.source);
    if (source == nullptr) {
      throw SafetensorsError(path().string() + ": no tensor named '" + alias.source + "' (for '" +
                             alias.name + "')");
    }
    if (!out->index_.empty() && out->index_.back().name == alias.name) {
      throw SafetensorsError(path().string() + ": two tensors for '" + alias.name + "'");
    }
    StTensorInfo info = *source;
    info.name = alias.name;
    try {
      info.shape = alias_shape(alias, source->shape);
    } catch (const std::invalid_argument& e) {
      throw SafetensorsError(path().string() + ": " + e.what());
    }
    out->index_.push_back(std::move(info));
  }
  out->aliases_ = std::move(aliases);
  return out;
}

std::string SafetensorsFile::describe() const {
  return view_ ? path().string() + " (" + label_ + ")" : path().string();
}

std::string SafetensorsFile::source_of(std::string_view name) const {
  if (!view_) return "";
  const StTensorInfo* info = find(name);
  return info ? aliases_[static_cast<std::size_t>(info - index_.data())].source : "";
}

void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const std::uint64_t size = c.numel() * c.element_size();
    header[name] = {{"dtype", to_string(from_torch(c.scalar_type()))},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + size}}};
    offset += size;
    contiguous.push_back(std::move(c));
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');  // align the data buffer to 8
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw SafetensorsError(path.string() + ": cannot open for writing");
  std::uint64_t len = text.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out.write(len_bytes, 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& c : contiguous) {
    out.write(static_cast<const char*>(c.data_ptr()),
              static_cast<std::streamsize>(c.numel() * c.element_size()));
  }
  if (!out) throw SafetensorsError(path.string() + ": write failed");
}

}  // namespace diffusiond
