// The LoRA folder (daemon/lora_catalog.h): names are file stems, never paths; hashes are the
// file's SHA-256 (checked against the fixture's golden/lora.json, written by Python's hashlib)
// and A1111's short hash (the SHA-256 of the bytes after the safetensors header, or the file's
// sshs_model_hash metadata), cached by path + size + mtime.
#include <catch2/catch.hpp>

#include <fstream>
#include <nlohmann/json.hpp>

#include "daemon/lora_catalog.h"
#include "temp_dir.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kLoras = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1-extras" / "lora";

nlohmann::json golden() {
  std::ifstream in(fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1-extras" / "golden" / "lora.json");
  return nlohmann::json::parse(in);
}

// A minimal safetensors file: header JSON, then `data`.
void write_st(const fs::path& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
}

}  // namespace

TEST_CASE("LoRA folder: names, traversal and hashes", "[lora]") {
  test::TempDir dir;
  for (const char* f : {"style_kohya.safetensors", "style_peft.safetensors"})
    fs::copy_file(kLoras / f, dir.path() / f);
  fs::create_directories(dir.path() / "folder.safetensors");
  std::ofstream(dir.path() / "notes.txt") << "not a LoRA";
  fs::create_directories(dir.path() / "sub");
  fs::copy_file(kLoras / "style_peft.safetensors", dir.path() / "sub" / "hidden.safetensors");
  LoraCatalog catalog(dir.path());

  CHECK(catalog.names() == std::vector<std::string>{"style_kohya", "style_peft"});
  CHECK(catalog.find("style_kohya") == dir.path() / "style_kohya.safetensors");
  for (const char* bad : {"folder", "notes", "notes.txt", "sub/hidden", "../sub/hidden", "..", ".",
                          "", "sub\\hidden", "style_kohya.safetensors"})
    CHECK_FALSE(catalog.find(bad));

  const auto list = catalog.list();
  REQUIRE(list.size() == 2);
  const auto g = golden()["lora_files"];
  CHECK(list[0].sha256 == g["style_kohya.safetensors"]["sha256"].get<std::string>());
  CHECK(list[0].size_bytes ==
        g["style_kohya.safetensors"]["bytes"].get<decltype(list[0].size_bytes)>());
  CHECK(list[1].sha256 == g["style_peft.safetensors"]["sha256"].get<std::string>());
  CHECK(list[0].short_hash.size() == 12);
  CHECK(list[0].short_hash != list[0].sha256.substr(0, 12));  // not of the header

  // The short hash ignores the header (A1111's addnet hash) unless sshs_model_hash says it.
  write_st(dir.path() / "a.safetensors", R"({"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})",
           "abc");
  write_st(
      dir.path() / "b.safetensors",
      R"({"__metadata__":{"note":"other"},"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})",
      "abc");
  write_st(
      dir.path() / "c.safetensors",
      R"({"__metadata__":{"sshs_model_hash":"0123456789abcdef0123"},"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})",
      "abc");
  const auto a = catalog.hash(dir.path() / "a.safetensors");
  const auto b = catalog.hash(dir.path() / "b.safetensors");
  CHECK(a.short_hash == b.short_hash);
  CHECK(a.sha256 != b.sha256);
  // sha256("abc"), FIPS 180-2's test vector: the bytes after the header.
  CHECK(a.short_hash ==
        std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
            .substr(0, 12));
  CHECK(catalog.hash(dir.path() / "c.safetensors").short_hash == "0123456789ab");

  // Cached by path + size + mtime: a changed file is hashed again.
  write_st(dir.path() / "a.safetensors", R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
           "abcd");
  CHECK(catalog.hash(dir.path() / "a.safetensors").short_hash != a.short_hash);
  CHECK_THROWS(catalog.hash(dir.path() / "gone.safetensors"));

  LoraCatalog empty(dir.path() / "no such folder");
  CHECK(empty.names().empty());
  CHECK(empty.list().empty());
}
