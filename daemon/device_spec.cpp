#include "daemon/device_spec.h"

#include <algorithm>
#include <set>
#include <stdexcept>

namespace diffusiond {

namespace {
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

int parse_count(const std::string& text, const std::string& entry) {
  std::size_t used = 0;
  int value = -1;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || value < 0)
    throw std::invalid_argument("--devices: bad number in '" + entry + "'");
  return value;
}

std::vector<DeviceSpec> cpu_workers(int n) {
  std::vector<DeviceSpec> out;
  for (int i = 0; i < n; ++i)
    out.push_back({DeviceSpec::Kind::cpu, i, n == 1 ? "cpu" : "cpu:" + std::to_string(i)});
  return out;
}

std::vector<DeviceSpec> all_cuda(int cuda_count) {
  std::vector<DeviceSpec> out;
  for (int i = 0; i < cuda_count; ++i)
    out.push_back({DeviceSpec::Kind::cuda, i, "cuda:" + std::to_string(i)});
  return out;
}
}  // namespace

std::vector<DeviceSpec> parse_devices(const std::string& spec, int cuda_count) {
  const std::string all = trim(spec);
  if (all.empty() || all == "auto") return cuda_count > 0 ? all_cuda(cuda_count) : cpu_workers(1);
  if (all == "cpu") return cpu_workers(1);
  if (all.rfind("cpu*", 0) == 0) {
    const int n = parse_count(all.substr(4), all);
    if (n < 1 || n > 256) throw std::invalid_argument("--devices: cpu*N needs 1 <= N <= 256");
    return cpu_workers(n);
  }
  std::vector<DeviceSpec> out;
  std::set<int> seen;
  std::size_t start = 0;
  while (start <= all.size()) {
    const auto comma = all.find(',', start);
    const std::string entry =
        trim(all.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    start = comma == std::string::npos ? all.size() + 1 : comma + 1;
    if (entry == "cuda") {
      if (cuda_count == 0) throw std::invalid_argument("--devices: 'cuda' but no CUDA device");
      for (const auto& d : all_cuda(cuda_count))
        if (seen.insert(d.index).second) out.push_back(d);
      continue;
    }
    if (entry.rfind("cuda:", 0) != 0)
      throw std::invalid_argument("--devices: unknown device '" + entry +
                                  "' (use auto, cpu, cpu*N, cuda or cuda:I,cuda:J)");
    const int index = parse_count(entry.substr(5), entry);
    if (index >= cuda_count)
      throw std::invalid_argument("--devices: " + entry + " does not exist (" +
                                  std::to_string(cuda_count) + " CUDA device(s) visible)");
    if (!seen.insert(index).second)
      throw std::invalid_argument("--devices: " + entry + " is listed twice");
    out.push_back({DeviceSpec::Kind::cuda, index, "cuda:" + std::to_string(index)});
  }
  return out;
}

int threads_per_worker(int total_threads, int workers) {
  return std::max(1, total_threads / std::max(1, workers));
}

}  // namespace diffusiond
