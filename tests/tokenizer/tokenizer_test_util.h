// Helpers shared by the tokenizer tests: fixture paths, the golden cases, scratch folders.
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "pipeline/media/config_util.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/text/clip_tokenizer.h"

namespace tokenizer_test {

inline std::filesystem::path fixture_model() {
  return std::filesystem::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
}
inline std::filesystem::path fixture_tokenizer() {
  return fixture_model() / "tokenizer";
}

// golden/tokenizer_cases.json: [{prompt, ids (77), tags, normalized, num_tokens_untruncated, ...}]
inline const nlohmann::json& golden_cases() {
  static const nlohmann::json cases =
      diffusiond::read_json_file(fixture_model() / "golden" / "tokenizer_cases.json");
  return cases;
}

inline const diffusiond::ClipTokenizer& fixture_tokenizer_instance() {
  static const diffusiond::ClipTokenizer tok = diffusiond::ClipTokenizer::load(fixture_tokenizer());
  return tok;
}

// A fresh folder under the system temp dir, removed with the object.
class ScratchDir {
 public:
  ScratchDir() {
    std::mt19937_64 rng(std::random_device{}());
    path_ = std::filesystem::temp_directory_path() /
            ("diffusiond-tokenizer-test-" + std::to_string(rng()));
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    diffusiond::remove_tree(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_text(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
}

// A copy of the fixture's tokenizer folder whose JSON files the test may then rewrite.
inline void copy_fixture_tokenizer(const std::filesystem::path& to) {
  for (const char* name :
       {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}) {
    std::filesystem::copy_file(fixture_tokenizer() / name, to / name);
  }
}

}  // namespace tokenizer_test
