// Strict state-dict loading (pipeline/weights.h) against files written by write_safetensors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>

#include "pipeline/cpu_memory.h"
#include "pipeline/media/safetensors_map.h"
#include "pipeline/safetensors.h"
#include "pipeline/skip_init.h"
#include "pipeline/weights.h"
#include "tests/support/process_temp_dir.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

struct InnerImpl : torch::nn::Module {
  InnerImpl() {
    proj = register_module("proj", torch::nn::Linear(3, 2));
    ids = register_buffer("position_ids", torch::arange(4, torch::kInt64));
  }
  torch::nn::Linear proj{nullptr};
  torch::Tensor ids;
};
TORCH_MODULE(Inner);

struct OuterImpl : torch::nn::Module {
  OuterImpl() {
    inner = register_module("inner", Inner());
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({2})));
  }
  Inner inner{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(Outer);

fs::path temp_file(const std::string& name) {
  return diffusiond::testing::process_temp_dir("test_weights") / name;
}

std::vector<std::pair<std::string, torch::Tensor>> good_tensors() {
  return {{"inner.proj.weight", torch::arange(6, torch::kFloat32).reshape({2, 3})},
          {"inner.proj.bias", torch::tensor({0.5f, -0.5f})},
          {"inner.position_ids", torch::tensor({7, 8, 9, 10}, torch::kInt64)},
          {"norm.weight", torch::tensor({2.0f, 3.0f})},
          {"norm.bias", torch::tensor({0.25f, 0.125f})}};
}

std::string load_error(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::string& name) {
  auto path = temp_file(name);
  write_safetensors(path, tensors);
  auto file = SafetensorsFile::open(path);
  Outer model;
  try {
    load_weights(*model, *file, torch::kCPU, torch::kFloat32);
  } catch (const WeightsError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("load_weights sets every parameter and buffer, in place when the dtype matches",
          "[weights]") {
  auto path = temp_file("good.safetensors");
  write_safetensors(path, good_tensors());
  auto file = SafetensorsFile::open(path);
  Outer model;
  load_weights(*model, *file, torch::kCPU, torch::kFloat32);
  CHECK(
      torch::equal(model->inner->proj->weight, torch::arange(6, torch::kFloat32).reshape({2, 3})));
  CHECK(torch::equal(model->norm->bias, torch::tensor({0.25f, 0.125f})));
  // Integer buffer keeps its dtype and gets the file's values; handles held by the module agree.
  CHECK(model->inner->ids.scalar_type() == torch::kInt64);
  CHECK(torch::equal(model->inner->ids, torch::tensor({7, 8, 9, 10}, torch::kInt64)));
  auto out = model->inner->proj->forward(torch::ones({1, 3}));
  CHECK(torch::allclose(out, torch::tensor({{3.5f, 11.5f}})));
  // CPU, the file's dtype: the parameter is the mapping's bytes (no copy; read-only by
  // contract, see weights.h).
  CHECK(model->norm->weight.data_ptr() == file->tensor("norm.weight").data_ptr());
  // Another dtype is a copy the module owns: changing it does not touch the mapping.
  Outer cast;
  load_weights(*cast, *file, torch::kCPU, torch::kFloat64);
  CHECK(cast->norm->weight.data_ptr() != file->tensor("norm.weight").data_ptr());
  {
    torch::NoGradGuard g;
    cast->norm->weight.fill_(0);
  }
  CHECK(torch::equal(file->tensor("norm.weight"), torch::tensor({2.0f, 3.0f})));
}

TEST_CASE("load_weights casts floating tensors to the target dtype, keep_fp32 excepted",
          "[weights]") {
  auto path = temp_file("cast.safetensors");
  write_safetensors(path, good_tensors());
  auto file = SafetensorsFile::open(path);
  Outer model;
  LoadWeightsOptions options;
  options.keep_fp32 = [](const std::string& key) { return key.rfind("norm.", 0) == 0; };
  load_weights(*model, *file, torch::kCPU, torch::kBFloat16, options);
  CHECK(model->inner->proj->weight.scalar_type() == torch::kBFloat16);
  CHECK(model->norm->weight.scalar_type() == torch::kFloat32);
  CHECK(model->inner->ids.scalar_type() == torch::kInt64);
  CHECK(model->inner->proj->weight[1][2].item<float>() == 5.0f);
}

TEST_CASE("load_weights reports missing, unexpected and mis-shaped keys together", "[weights]") {
  auto tensors = good_tensors();
  tensors.erase(tensors.begin() + 1);                       // drop inner.proj.bias
  tensors.emplace_back("extra.weight", torch::zeros({1}));  // unexpected
  tensors[0].second = torch::zeros({3, 2});                 // mis-shaped weight
  auto message = load_error(tensors, "bad.safetensors");
  INFO(message);
  CHECK(message.find("bad.safetensors") != std::string::npos);
  CHECK(message.find("missing key(s): inner.proj.bias") != std::string::npos);
  CHECK(message.find("unexpected key(s): extra.weight") != std::string::npos);
  CHECK(message.find("inner.proj.weight (file [3,2], model [2,3])") != std::string::npos);
}

TEST_CASE("load_weights skips ignored keys whether present or absent", "[weights]") {
  auto ignore = [](const std::string& key) { return key == "inner.position_ids"; };
  auto tensors = good_tensors();
  tensors.erase(tensors.begin() + 2);  // no position_ids in the file
  auto path = temp_file("ignored.safetensors");
  write_safetensors(path, tensors);
  Outer model;
  load_weights(*model, *SafetensorsFile::open(path), torch::kCPU, torch::kFloat32, ignore);
  CHECK(torch::equal(model->inner->ids, torch::arange(4, torch::kInt64)));  // untouched
  // Without the predicate the same file is an error naming the key.
  auto message = load_error(tensors, "ignored2.safetensors");
  CHECK(message.find("missing key(s): inner.position_ids") != std::string::npos);
}

namespace {

// The resident KiB of `file`'s mappings in this process (/proc/self/smaps).
std::int64_t mapped_rss_kib(const fs::path& file) {
  std::ifstream in("/proc/self/smaps");
  const std::string name = fs::canonical(file).string();
  std::string line;
  bool ours = false;
  std::int64_t kib = 0;
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
        line.find('-') != std::string::npos && line.find(' ') > line.find('-')) {
      ours = line.size() >= name.size() &&
             line.compare(line.size() - name.size(), name.size(), name) == 0;
    } else if (ours && line.rfind("Rss:", 0) == 0) {
      kib += std::stoll(line.substr(4));
    }
  }
  return kib;
}

}  // namespace

TEST_CASE("release_resident_pages drops a mapped weight's pages, whose values read back",
          "[weights]") {
  auto path = temp_file("pages.safetensors");
  const torch::Tensor values = torch::arange(1 << 20, torch::kFloat32);  // 4 MiB
  write_safetensors(path, {{"w", values}});
  auto file = SafetensorsFile::open(path);
  const torch::Tensor w = file->tensor("w");
  REQUIRE(torch::equal(w, values));  // every page read: resident
  const std::int64_t before = mapped_rss_kib(path);
  CHECK(before >= 4096 - 8);
  CHECK(SafetensorsMap::release_resident_pages(w.data_ptr(), w.nbytes()));
  const std::int64_t after = mapped_rss_kib(path);
  INFO("mapped RSS " << before << " KiB before, " << after << " KiB after");
  CHECK(before - after >= 4096 - 8);  // all the tensor's whole pages
  CHECK(torch::equal(w, values));     // faulted in again from the file
  // Memory that is not a live mapping's is left alone.
  const torch::Tensor heap = values.clone();
  CHECK_FALSE(SafetensorsMap::release_resident_pages(heap.data_ptr(), heap.nbytes()));
  CHECK(torch::equal(heap, values));
}

TEST_CASE("SkipRandomInit leaves new parameters untouched, on its thread and only while alive",
          "[weights]") {
  torch::NoGradGuard no_grad;
  const torch::Tensor sevens = torch::full({64}, 7.0f);
  torch::Tensor t = sevens.clone();
  {
    SkipRandomInit skip;
    t.uniform_(-1, 1);
    CHECK(torch::equal(t, sevens));
    t.normal_(0, 1);
    CHECK(torch::equal(t, sevens));
    torch::nn::Linear linear(16, 16);  // constructed without drawing: the bytes are whatever
    {                                  // the allocator gave, and nesting keeps skipping
      SkipRandomInit inner;
    }
    t.uniform_(-1, 1);
    CHECK(torch::equal(t, sevens));
    std::thread other([&] {  // another thread draws as always
      torch::Tensor u = sevens.clone();
      u.uniform_(-1, 1);
      CHECK(u.abs().max().item<float>() <= 1.0f);
    });
    other.join();
  }
  t.uniform_(-1, 1);  // after the guard: drawn again
  CHECK(t.abs().max().item<float>() <= 1.0f);
  CHECK_FALSE(torch::equal(t, sevens));
  // The same draws as without the kernel: a seeded generator gives diffusers' numbers.
  auto a = at::detail::createCPUGenerator(5), b = at::detail::createCPUGenerator(5);
  torch::Tensor x = torch::empty({1000}), y = torch::empty({1000});
  x.normal_(0, 1, a);
  {
    c10::impl::ExcludeDispatchKeyGuard plain(c10::DispatchKey::AutocastCPU);
    y.normal_(0, 1, b);
  }
  CHECK(torch::equal(x, y));
  // CPU autocast switched on by someone else still draws (the kernel forwards).
  c10::impl::tls_set_dispatch_key_excluded(c10::DispatchKey::AutocastCPU, false);
  torch::Tensor z = sevens.clone();
  z.normal_(0, 1);
  c10::impl::tls_set_dispatch_key_excluded(c10::DispatchKey::AutocastCPU, true);
  CHECK_FALSE(torch::equal(z, sevens));
}

namespace {
// This process's anonymous resident KiB (/proc/self/status RssAnon).
long resident_anon_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::stol(line.substr(8));
  return -1;
}
}  // namespace

TEST_CASE("CpuPeakPhase runs one CPU phase at a time and hands its freed heap back",
          "[weights][memory]") {
  retain_freed_cpu_memory();  // as a CPU model's load does: freed blocks would stay resident
  // Phases on four threads never overlap; a phase for a CUDA device (false) takes no lock.
  std::atomic<int> inside{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i) {
        const CpuPeakPhase phase(true);
        const int now = ++inside;
        most = std::max(most.load(), now);
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        --inside;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(most.load() == 1);
  {
    const CpuPeakPhase held(true);
    bool other_ran = false;
    std::thread cuda([&] {
      const CpuPeakPhase not_cpu(false);
      other_ran = true;
    });
    cuda.join();  // would deadlock if a non-CPU phase waited for the CPU one
    CHECK(other_ran);
  }
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  // 256 MiB written and freed inside a phase: with the heap retained it would stay resident;
  // the phase's end returns it.
  const long before = resident_anon_kib();
  {
    const CpuPeakPhase phase(true);
    std::vector<void*> blocks;
    for (int i = 0; i < 8; ++i) {
      blocks.push_back(std::malloc(32 << 20));
      std::memset(blocks.back(), 1, 32 << 20);
    }
    CHECK(resident_anon_kib() - before >= 200 * 1024);
    for (void* b : blocks) std::free(b);
  }
  CHECK(resident_anon_kib() - before <= 32 * 1024);
  // And what another phase of the process (a UNet loop) freed before a phase starts does not
  // stay under it: the phase starts from the live bytes.
  {
    std::vector<void*> blocks;
    for (int i = 0; i < 8; ++i) {
      blocks.push_back(std::malloc(32 << 20));
      std::memset(blocks.back(), 1, 32 << 20);
    }
    for (void* b : blocks) std::free(b);
    CHECK(resident_anon_kib() - before >= 200 * 1024);  // retained
    const CpuPeakPhase phase(true);
    CHECK(resident_anon_kib() - before <= 32 * 1024);
  }
#endif
}
