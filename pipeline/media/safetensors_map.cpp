#include "pipeline/media/safetensors_map.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace diffusiond {
namespace {

// Header JSON larger than this is refused before reading it (the reference library uses 100 MB).
constexpr std::uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
  throw SafetensorsError(path.string() + ": " + problem);
}

// numel * element size, or false on overflow.
bool byte_size(const std::vector<std::int64_t>& shape, std::size_t elem, std::uint64_t& out) {
  std::uint64_t n = elem;
  for (std::int64_t d : shape) {
    if (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / static_cast<std::uint64_t>(d)) {
      return false;
    }
    n *= static_cast<std::uint64_t>(d);
  }
  out = n;
  return true;
}

StTensorInfo parse_entry(const std::filesystem::path& path, const std::string& name,
                         const nlohmann::json& entry, std::uint64_t data_size) {
  auto bad = [&](const std::string& what) { fail(path, "tensor '" + name + "': " + what); };
  if (!entry.is_object()) bad("header entry is not an object");
  StTensorInfo info;
  info.name = name;
  auto dt = entry.find("dtype");
  if (dt == entry.end() || !dt->is_string()) bad("missing dtype");
  if (!parse_dtype(dt->get<std::string>(), info.dtype)) {
    bad("unknown dtype '" + dt->get<std::string>() + "'");
  }
  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) bad("missing shape");
  for (const auto& d : *shape) {
    if (!d.is_number_unsigned()) bad("shape has a non-integer or negative dimension");
    auto v = d.get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      bad("shape dimension too large");
    }
    info.shape.push_back(static_cast<std::int64_t>(v));
  }
  auto offs = entry.find("data_offsets");
  if (offs == entry.end() || !offs->is_array() || offs->size() != 2 ||
      !(*offs)[0].is_number_unsigned() || !(*offs)[1].is_number_unsigned()) {
    bad("data_offsets must be two non-negative integers");
  }
  info.begin = (*offs)[0].get<std::uint64_t>();
  info.end = (*offs)[1].get<std::uint64_t>();
  if (info.begin > info.end) bad("data_offsets begin > end");
  if (info.end > data_size) {
    bad("data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
        ") out of range: the data buffer has " + std::to_string(data_size) + " bytes");
  }
  std::uint64_t expected = 0;
  if (!byte_size(info.shape, element_size(info.dtype), expected) ||
      expected != info.end - info.begin) {
    bad("shape/offset mismatch: shape needs " + std::to_string(expected) + " bytes, offsets span " +
        std::to_string(info.end - info.begin));
  }
  return info;
}

}  // namespace

std::size_t element_size(StDType dtype) {
  switch (dtype) {
    case StDType::F64:
    case StDType::I64:
      return 8;
    case StDType::F32:
    case StDType::I32:
      return 4;
    case StDType::F16:
    case StDType::BF16:
    case StDType::I16:
      return 2;
    case StDType::I8:
    case StDType::U8:
    case StDType::BOOL:
      return 1;
  }
  return 1;
}

const char* to_string(StDType dtype) {
  switch (dtype) {
    case StDType::F64:
      return "F64";
    case StDType::F32:
      return "F32";
    case StDType::F16:
      return "F16";
    case StDType::BF16:
      return "BF16";
    case StDType::I64:
      return "I64";
    case StDType::I32:
      return "I32";
    case StDType::I16:
      return "I16";
    case StDType::I8:
      return "I8";
    case StDType::U8:
      return "U8";
    case StDType::BOOL:
      return "BOOL";
  }
  return "?";
}

bool parse_dtype(std::string_view s, StDType& out) {
  static const std::pair<const char*, StDType> table[] = {
      {"F64", StDType::F64}, {"F32", StDType::F32},  {"F16", StDType::F16}, {"BF16", StDType::BF16},
      {"I64", StDType::I64}, {"I32", StDType::I32},  {"I16", StDType::I16}, {"I8", StDType::I8},
      {"U8", StDType::U8},   {"BOOL", StDType::BOOL}};
  for (const auto& [name, dtype] : table) {
    if (s == name) {
      out = dtype;
      return true;
    }
  }
  return false;
}

SafetensorsHeader parse_safetensors_header(const std::filesystem::path& path,
                                           const std::uint8_t* bytes, std::uint64_t file_size) {
  if (file_size < 8) {
    fail(path, "file too short (" + std::to_string(file_size) +
                   " bytes) to hold the 8-byte header length");
  }
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > file_size - 8) {
    fail(path, "header length " + std::to_string(header_len) + " is beyond the end of the file (" +
                   std::to_string(file_size) + " bytes)");
  }
  if (header_len > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("invalid JSON header: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");

  SafetensorsHeader out;
  out.data_offset = 8 + header_len;
  const std::uint64_t data_size = file_size - 8 - header_len;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(path, "__metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) fail(path, "__metadata__ value for '" + mk + "' is not a string");
        out.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    out.tensors.push_back(parse_entry(path, key, value, data_size));
  }

  // Overlap check over the byte ranges (zero-sized tensors cannot overlap anything).
  std::vector<const StTensorInfo*> by_offset;
  for (const auto& t : out.tensors) {
    if (t.end > t.begin) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      fail(path, "tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
                     "' have overlapping data_offsets");
    }
  }
  std::sort(out.tensors.begin(), out.tensors.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

namespace {

// The live mappings, [begin, end) (release_resident_pages drops pages only inside them).
std::mutex& live_maps_mutex() {
  static std::mutex mu;
  return mu;
}
std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& live_maps() {
  static std::vector<std::pair<std::uintptr_t, std::uintptr_t>> maps;
  return maps;
}

}  // namespace

bool SafetensorsMap::release_resident_pages(const void* p, std::size_t n) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto first = reinterpret_cast<std::uintptr_t>(p);
  const auto last = first + n;
  {
    std::lock_guard lock(live_maps_mutex());
    bool inside = false;
    for (const auto& [begin, end] : live_maps()) inside = inside || (first >= begin && last <= end);
    if (!inside) return false;
    const std::uintptr_t from = (first + page - 1) / page * page, to = last / page * page;
    // Under the lock: the mapping cannot be unmapped (and the range reused) meanwhile.
    if (to > from) ::madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
  }
  return true;
}

std::shared_ptr<const SafetensorsMap> SafetensorsMap::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(errno));
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  std::shared_ptr<SafetensorsMap> file(new SafetensorsMap());
  file->path_ = path;
  if (file_size > 0) {  // an empty file cannot be mapped; parse_safetensors_header refuses it
    void* map = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      ::close(fd);
      fail(path, std::string("cannot mmap: ") + std::strerror(errno));
    }
    file->map_ = map;
    file->map_size_ = file_size;
    const auto begin = reinterpret_cast<std::uintptr_t>(map);
    std::lock_guard lock(live_maps_mutex());
    live_maps().emplace_back(begin, begin + file_size);
  }
  ::close(fd);
  auto* bytes = static_cast<std::uint8_t*>(file->map_);
  SafetensorsHeader header = parse_safetensors_header(path, bytes, file_size);
  file->data_ = bytes + header.data_offset;
  file->tensors_ = std::move(header.tensors);
  file->metadata_ = std::move(header.metadata);
  return file;
}

SafetensorsMap::~SafetensorsMap() {
  if (map_ == nullptr) return;
  std::lock_guard lock(live_maps_mutex());
  auto& maps = live_maps();
  std::erase(maps, std::make_pair(reinterpret_cast<std::uintptr_t>(map_),
                                  reinterpret_cast<std::uintptr_t>(map_) + map_size_));
  ::munmap(map_, map_size_);
}

const StTensorInfo* SafetensorsMap::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const StTensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

}  // namespace diffusiond
