// A model folder that is a fixture with one scheduler config swapped in (e.g. the Turbo
// goldens' EulerAncestral "trailing"): a temporary folder of symlinks to the fixture's other
// entries, removed again by the destructor. Header-only, torch-free.
// Owner: the test that creates it; any thread once constructed.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <system_error>

namespace diffusiond::testing {

class ModelVariant {
 public:
  ModelVariant(const std::filesystem::path& fixture, const std::filesystem::path& scheduler_config,
               const std::string& tag) {
    namespace fs = std::filesystem;
    static std::atomic<int> counter{0};
    dir_ =
        fs::temp_directory_path() / ("diffusiond_variant_" + tag + "_" +
                                     std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "scheduler");
    for (const auto& entry : fs::directory_iterator(fixture)) {
      const auto name = entry.path().filename();
      if (name == "scheduler" || name == "golden") continue;
      fs::create_symlink(fs::absolute(entry.path()), dir_ / name);
    }
    fs::copy_file(scheduler_config, dir_ / "scheduler" / "scheduler_config.json");
  }
  ~ModelVariant() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  ModelVariant(const ModelVariant&) = delete;
  ModelVariant& operator=(const ModelVariant&) = delete;

  const std::filesystem::path& path() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

}  // namespace diffusiond::testing
