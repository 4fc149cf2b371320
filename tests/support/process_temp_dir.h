// A temporary folder per test process and tag, created on first use and removed with everything
// in it when the process exits (ctest runs each test case in its own process, so nothing piles
// up in /tmp). Header-only, torch-free. Thread-safety: the first call creates it (a function-local
// static); later calls only read.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace diffusiond::testing {

inline const std::filesystem::path& process_temp_dir(const std::string& tag) {
  struct Dir {
    std::filesystem::path path;
    explicit Dir(const std::string& t)
        : path(std::filesystem::temp_directory_path() /
               ("diffusiond_" + t + "_" + std::to_string(::getpid()))) {
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  };
  static const Dir dir(tag);  // one tag per test binary
  return dir.path;
}

}  // namespace diffusiond::testing
