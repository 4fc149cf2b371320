// safetensors reader: every dtype round-trips through files the test writes; every malformed
// file is rejected with one clear line naming the file and the problem.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "pipeline/safetensors.h"
#include "tests/support/process_temp_dir.h"

namespace fs = std::filesystem;
using diffusiond::SafetensorsError;
using diffusiond::SafetensorsFile;

namespace {

fs::path temp_dir() {
  return diffusiond::testing::process_temp_dir("test_safetensors");
}

// Writes a raw safetensors file: header JSON text + data bytes.
fs::path write_raw(const std::string& name, const std::string& header, const std::string& data,
                   std::int64_t declared_len = -1) {
  fs::path p = temp_dir() / name;
  std::ofstream out(p, std::ios::binary);
  std::uint64_t len = declared_len < 0 ? header.size() : static_cast<std::uint64_t>(declared_len);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((len >> (8 * i)) & 0xff));
  out << header << data;
  return p;
}

std::string open_error(const fs::path& p) {
  try {
    SafetensorsFile::open(p);
  } catch (const SafetensorsError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors: every dtype reads back what was written", "[safetensors]") {
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({4, 2}).to(torch::kFloat16)},
      {"bf16", torch::randn({7}).to(torch::kBFloat16)},
      {"i64", torch::arange(-6, 6, torch::kInt64).reshape({3, 4})},
      {"i32", torch::arange(0, 9, torch::kInt32).reshape({3, 3}) * -7},
      {"u8", torch::arange(250, 256, torch::kInt32).to(torch::kUInt8)},
      {"bool", torch::tensor({true, false, true, true})},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::zeros({0, 3})},
  };
  fs::path p = temp_dir() / "all_dtypes.safetensors";
  diffusiond::write_safetensors(p, tensors, {{"format", "pt"}, {"note", "hello"}});

  auto file = SafetensorsFile::open(p);
  REQUIRE(file->tensors().size() == tensors.size());
  CHECK(file->metadata().at("format") == "pt");
  CHECK(file->metadata().at("note") == "hello");
  for (const auto& [name, expected] : tensors) {
    INFO(name);
    torch::Tensor got = file->tensor(name);
    CHECK(got.scalar_type() == expected.scalar_type());
    CHECK(got.sizes() == expected.sizes());
    CHECK(torch::equal(got, expected));
  }
  CHECK(file->find("missing") == nullptr);
  CHECK_THROWS_WITH(file->tensor("missing"), Catch::Contains("no tensor named 'missing'"));
}

TEST_CASE("safetensors: tensors are views over the mapping and outlive the file object",
          "[safetensors]") {
  fs::path p = temp_dir() / "view.safetensors";
  diffusiond::write_safetensors(p, {{"w", torch::arange(16, torch::kFloat32)}});
  torch::Tensor t;
  {
    auto file = SafetensorsFile::open(p);
    t = file->tensor("w");
    auto again = file->tensor("w");
    CHECK(t.data_ptr() == again.data_ptr());  // same bytes: no copy
  }
  CHECK(t[15].item<float>() == 15.0f);  // the mapping is still alive
  // While anything holds the mapping, opening the file again shares it (one per process).
  auto shared = SafetensorsFile::open(p);
  CHECK(shared->tensor("w").data_ptr() == t.data_ptr());
  t.add_(1);  // private mapping: the file is not changed
  t = torch::Tensor();
  shared.reset();
  auto reopened = SafetensorsFile::open(p);  // mapped anew: the file's own bytes
  CHECK(reopened->tensor("w")[15].item<float>() == 15.0f);
}

TEST_CASE("safetensors: the fixture's UNet weights open", "[safetensors]") {
  auto file = SafetensorsFile::open(fs::path(DIFFUSIOND_FIXTURES) /
                                    "tiny-sd1/unet/diffusion_pytorch_model.safetensors");
  CHECK(file->contains("conv_in.weight"));
  CHECK(file->tensor("conv_in.weight").sizes() == torch::IntArrayRef({32, 4, 3, 3}));
}

TEST_CASE("safetensors: malformed files give one clear line naming the file", "[safetensors]") {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight_bytes(8, '\0');

  struct Case {
    std::string name;
    fs::path path;
    std::string expected;
  };
  std::vector<Case> cases;
  {
    fs::path p = temp_dir() / "short.safetensors";
    std::ofstream(p, std::ios::binary) << "abc";
    cases.push_back({"short file", p, "too short"});
  }
  cases.push_back({"header length beyond the file",
                   write_raw("long_header.safetensors", "{" + ok_entry + "}", eight_bytes, 1 << 30),
                   "beyond the end of the file"});
  cases.push_back({"invalid JSON", write_raw("bad_json.safetensors", "{\"a\": [1,", eight_bytes),
                   "invalid JSON header"});
  cases.push_back(
      {"header not an object", write_raw("array.safetensors", "[1,2]", ""), "not a JSON object"});
  cases.push_back({"unknown dtype",
                   write_raw("dtype.safetensors",
                             R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", "xx"),
                   "unknown dtype 'F8'"});
  cases.push_back(
      {"shape/offset mismatch",
       write_raw("mismatch.safetensors",
                 R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight_bytes),
       "shape/offset mismatch"});
  cases.push_back(
      {"offsets out of range",
       write_raw("range.safetensors", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                 eight_bytes),
       "out of range"});
  cases.push_back({"overlapping offsets",
                   write_raw("overlap.safetensors",
                             R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                             eight_bytes),
                   "overlapping"});
  cases.push_back(
      {"begin after end",
       write_raw("reversed.safetensors",
                 R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight_bytes),
       "begin > end"});
  cases.push_back(
      {"negative dimension",
       write_raw("negdim.safetensors", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                 eight_bytes),
       "negative"});
  cases.push_back(
      {"huge shape (no allocation of the bogus size)",
       write_raw("huge.safetensors",
                 R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})",
                 eight_bytes),
       "shape/offset mismatch"});
  cases.push_back({"missing file", temp_dir() / "does_not_exist.safetensors", "cannot open"});

  for (const auto& c : cases) {
    INFO(c.name);
    std::string err = open_error(c.path);
    CHECK_THAT(err, Catch::Contains(c.expected));
    CHECK_THAT(err, Catch::StartsWith(c.path.string() + ": "));
    CHECK(err.find('\n') == std::string::npos);
  }
}

TEST_CASE("safetensors: a truncated copy of a real weights file is rejected", "[safetensors]") {
  fs::path src = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1/vae/diffusion_pytorch_model.safetensors";
  fs::path dst = temp_dir() / "truncated.safetensors";
  fs::copy_file(src, dst, fs::copy_options::overwrite_existing);
  fs::resize_file(dst, fs::file_size(src) / 2);
  std::string err = open_error(dst);
  CHECK_THAT(err, Catch::Contains("out of range"));
  CHECK(err.find('\n') == std::string::npos);
}
