// Black-box: LoRAs through the real daemon (real HTTP): GET /loras, `loras` and <lora:...> tags
// giving diffusers' golden LoRA image (tiny-sd1-extras/golden/lora.*), the base image
// bit-identical after a LoRA was applied and removed, PNG metadata, and 4xx for unknown names
// and traversal attempts.
#include <catch2/catch.hpp>

#include <filesystem>

#include "blackbox_util.h"
#include "png_check.h"

using namespace diffusiond::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kExtras = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1-extras";

json golden() {
  return json::parse(read_file((kExtras / "golden" / "lora.json").string()));
}

std::string body(const json& extra) {
  const json g = golden();
  json b = {
      {"prompt", g["prompt"]}, {"negative_prompt", g["negative_prompt"]}, {"seed", g["seed"]},
      {"steps", g["steps"]},   {"guidance_scale", g["guidance_scale"]},   {"width", g["width"]},
      {"height", g["height"]}};
  if (extra.is_object()) b.update(extra);
  return b.dump();
}

// Runs a job (wait=1) and returns its job JSON and the PNG bytes of image 0.
std::pair<json, std::string> run(std::uint16_t port, const std::string& request) {
  HttpReply r = http_request(port, "POST", "/generate?wait=1", request);
  REQUIRE(r.status == 200);
  json job = r.json();
  REQUIRE(job["status"] == "done");
  HttpReply png =
      http_request(port, "GET", "/jobs/" + job["id"].get<std::string>() + "/images/0.png");
  REQUIRE(png.status == 200);
  return {job, png.body};
}

}  // namespace

TEST_CASE("LoRAs by name and by <lora:...> tag give the golden LoRA image", "[blackbox][lora]") {
  TempDir dir("lora");
  const fs::path loras = dir.path / "my loras";
  fs::create_directories(loras);
  fs::copy_file(kExtras / "lora" / "style_kohya.safetensors", loras / "style_kohya.safetensors");
  fs::copy_file(kExtras / "lora" / "style_peft.safetensors", loras / "style_peft.safetensors");
  fs::create_directories(loras / "subdir.safetensors");  // a folder is no LoRA
  DaemonProcess d(dir.path / "data", {"--devices", "cpu", "--lora-dir", loras.string()});
  const json g = golden();

  // GET /loras: name, size, hashes.
  const json list = get_json(d.port(), "/loras")["loras"];
  REQUIRE(list.size() == 2);
  CHECK(list[0]["name"] == "style_kohya");
  CHECK(list[0]["size_bytes"] == g["lora_files"]["style_kohya.safetensors"]["bytes"]);
  CHECK(list[0]["sha256"] == g["lora_files"]["style_kohya.safetensors"]["sha256"]);
  CHECK(list[0]["short_hash"].get<std::string>().size() == 12);
  CHECK(list[1]["name"] == "style_peft");
  CHECK(list[1]["sha256"] == g["lora_files"]["style_peft.safetensors"]["sha256"]);
  CHECK_FALSE(list[0].contains("path"));

  const auto base_before = run(d.port(), body({}));
  const DecodedImage golden_lora =
      decode_png(read_file((kExtras / "golden" / "lora_style_kohya.png").string()));
  const auto by_name =
      run(d.port(), body({{"loras", json::array({{{"name", "style_kohya"}, {"weight", 0.8}}})}}));
  CHECK(max_abs_diff(decode_png(by_name.second), golden_lora) <= 1);
  const auto by_peft =
      run(d.port(), body({{"loras", json::array({{{"name", "style_peft"}, {"weight", 0.8}}})}}));
  CHECK(max_abs_diff(decode_png(by_peft.second), golden_lora) <= 1);

  // The tag in the prompt == loras[] with the tag-free prompt.
  const auto by_tag = run(d.port(), body({{"prompt", g["cases"][0]["a1111_prompt"]}}));
  CHECK(decode_png(by_tag.second).pixels == decode_png(by_name.second).pixels);
  CHECK(by_tag.first["request"]["prompts"][0] == g["cases"][0]["a1111_parse"]["after_tag_removal"]);
  CHECK(by_tag.first["request"]["loras"] ==
        json::array({{{"name", "style_kohya"}, {"weight", 0.8}}}));

  // PNG metadata: Lora hashes in `parameters`, the LoRAs in the JSON chunk.
  const PngChunks chunks = read_png_chunks(by_name.second);
  const std::string short_hash = list[0]["short_hash"];
  CHECK(chunks.text.at("parameters").find(", Lora hashes: \"style_kohya: " + short_hash + "\"") !=
        std::string::npos);
  const json meta = json::parse(chunks.text.at("diffusiond"));
  CHECK(meta["loras"][0]["name"] == "style_kohya");
  CHECK(meta["loras"][0]["short_hash"] == short_hash);
  CHECK(meta["request"]["loras"][0]["weight"] == 0.8);

  // Back to none: the base image, bit for bit.
  const auto base_after = run(d.port(), body({}));
  CHECK(decode_png(base_after.second).pixels == decode_png(base_before.second).pixels);
  CHECK(read_png_chunks(base_after.second).text.at("parameters").find("Lora hashes") ==
        std::string::npos);

  // Two at once and a negative weight run (the merge math is test_lora's).
  const auto two =
      run(d.port(), body({{"loras", json::array({{{"name", "style_kohya"}, {"weight", 0.8}},
                                                 {{"name", "style_peft"}, {"weight", -0.8}}})}}));
  CHECK(max_abs_diff(decode_png(two.second), decode_png(base_before.second)) <= 1);  // they cancel

  // Unknown names and traversal attempts: 4xx naming the problem; nothing queued.
  struct Case {
    json extra;
    std::string reason, words;
  };
  const std::vector<Case> cases = {
      {{{"loras", json::array({{{"name", "nope"}, {"weight", 1}}})}}, "unknown_lora", "'nope'"},
      {{{"prompt", "x <lora:nope:0.5>"}}, "unknown_lora", "style_kohya"},
      {{{"loras", json::array({{{"name", "subdir"}, {"weight", 1}}})}}, "unknown_lora", "subdir"},
      {{{"loras", json::array({{{"name", "../data/x"}, {"weight", 1}}})}},
       "invalid_field",
       "not a path"},
      {{{"loras", json::array({{{"name", ".."}, {"weight", 1}}})}}, "invalid_field", "not a path"},
      {{{"prompt", "x <lora:../my loras/style_kohya:1>"}}, "invalid_field", "not a path"},
      {{{"prompt", "x <lora:style_kohya:lots>"}}, "invalid_field", "not a number"},
      {{{"prompt", "x <lora:style_kohya:0.5>"},
        {"loras", json::array({{{"name", "style_kohya"}, {"weight", 0.8}}})}},
       "invalid_field",
       "one weight per job"},
  };
  for (const Case& c : cases) {
    INFO(c.extra.dump());
    HttpReply r = http_request(d.port(), "POST", "/generate", body(c.extra));
    CHECK(r.status == 400);
    const json e = r.json()["error"];
    CHECK(e["code"] == c.reason);
    CHECK(e["message"].get<std::string>().find(c.words) != std::string::npos);
  }
}
