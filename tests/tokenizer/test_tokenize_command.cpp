// `diffusiond tokenize` run as a process (ctest sets DIFFUSIOND_BIN to the built executable).
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tokenizer_test_util.h"

namespace {

struct ProcessResult {
  int status = -1;
  std::string output;  // stdout and stderr
};

// Runs `command` through the shell; arguments must already be quoted.
ProcessResult run(const std::string& command) {
  ProcessResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  result.status = pclose(pipe);
  return result;
}

std::string quoted(const std::string& arg) {
  std::string out = "'";
  for (char c : arg) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

TEST_CASE("diffusiond tokenize prints the golden ids as one JSON line", "[tokenizer][cli]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  if (bin == nullptr || *bin == '\0') {
    WARN("DIFFUSIOND_BIN is not set (ctest sets it): skipping the diffusiond tokenize test");
    return;
  }
  const auto model = tokenizer_test::fixture_model().string();
  int checked = 0;
  for (const auto& c : tokenizer_test::golden_cases()) {
    const std::string prompt = c.at("prompt");
    // One plain ASCII prompt, one with quotes and Unicode, one truncated.
    const auto tags = c.at("tags");
    const bool wanted = prompt == "a photograph of an astronaut riding a horse" ||
                        tags.at(0) == "quotes" || tags.at(0) == "mixed" || tags.at(0) == "long";
    if (!wanted) continue;
    ++checked;
    INFO("prompt: " << prompt);
    const auto result =
        run(quoted(bin) + " tokenize --model " + quoted(model) + " -- " + quoted(prompt));
    INFO("output: " << result.output);
    REQUIRE(result.status == 0);
    CHECK(result.output == c.at("ids").dump() + "\n");
  }
  CHECK(checked == 4);
}

TEST_CASE("diffusiond tokenize names a missing model in its error", "[tokenizer][cli]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  if (bin == nullptr || *bin == '\0') {
    WARN("DIFFUSIOND_BIN is not set (ctest sets it): skipping the diffusiond tokenize test");
    return;
  }
  tokenizer_test::ScratchDir dir;
  const auto missing = (dir.path() / "no-model").string();
  const auto result = run(quoted(bin) + " tokenize --model " + quoted(missing) + " hello");
  CHECK(result.status != 0);
  CHECK_THAT(result.output, Catch::Contains(missing));
}
