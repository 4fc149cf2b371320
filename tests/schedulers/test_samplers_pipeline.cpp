// Every registered sampler driven by the real txt2img pipeline on the tiny-sd1 fixture: it
// completes, takes the number of model evaluations its method needs, is deterministic for a seed,
// and `diffusiond generate --scheduler <alias>` accepts the A1111 names.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "pipeline/media/png.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/model_folder.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/txt2img.h"

namespace fs = std::filesystem;
using namespace diffusiond;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";

StableDiffusion& tiny_pipeline() {
  static std::unique_ptr<StableDiffusion> pipe =
      StableDiffusion::load(resolve_model(kModel.string()), torch::kCPU, torch::kFloat32);
  return *pipe;
}

struct Run {
  std::vector<std::uint8_t> pixels;
  int evaluations = 0;
};

Run generate(const std::string& scheduler, std::uint64_t seed) {
  Txt2ImgParams p;
  p.prompts = {"a red cube on a table"};
  p.steps = 4;
  p.seed = seed;
  p.width = 64;
  p.height = 64;
  p.scheduler = scheduler;
  Run run;
  auto images = tiny_pipeline().generate(p, [&](int image, int, int) {
    if (image == 0) ++run.evaluations;
    return true;
  });
  REQUIRE(images.size() == 1);
  run.pixels = images[0].pixels;
  return run;
}

std::string bin_path() {
  if (const char* env = std::getenv("DIFFUSIOND_BIN")) return env;
  return std::string(DIFFUSIOND_BINARY_DIR) + "/daemon/diffusiond";
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("every sampler runs the tiny pipeline deterministically", "[schedulers][pipeline]") {
  // Model evaluations at 4 inference steps: PNDM repeats its first timestep, Heun evaluates
  // twice per step except the last.
  const std::map<std::string, int> evaluations = {{"pndm", 5}, {"heun", 7}};
  std::map<std::string, std::vector<std::uint8_t>> images;
  for (const auto& entry : scheduler_registry()) {
    INFO("sampler " << entry.name);
    const Run a = generate(entry.name, 11);
    const Run b = generate(entry.name, 11);
    CHECK(a.evaluations == (evaluations.count(entry.name) ? evaluations.at(entry.name) : 4));
    CHECK(a.pixels == b.pixels);
    images[entry.name] = a.pixels;
  }
  // The samplers really differ (e.g. the ancestral one adds fresh noise every step), and an
  // alias picks the same sampler as its canonical name.
  CHECK(images["euler"] != images["euler_a"]);
  CHECK(images["dpmpp_2m"] != images["dpmpp_2m_karras"]);
  CHECK(generate("Euler a", 11).pixels == images["euler_a"]);
  CHECK(generate("euler_a", 12).pixels != images["euler_a"]);
}

TEST_CASE("diffusiond generate --scheduler takes A1111 names", "[schedulers][cli]") {
  const fs::path dir =
      fs::temp_directory_path() / ("diffusiond_test_samplers_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path out = dir / "karras.png";
  std::string command = bin_path() + " generate --model " + kModel.string() +
                        " --prompt cube --seed 3 --steps 3 --width 64 --height 64" +
                        " --scheduler \"DPM++ 2M Karras\" -o " + out.string() + " > " +
                        (dir / "karras.log").string() + " 2>&1";
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  const auto chunks = read_png_text_chunks(read_file(out));
  REQUIRE(chunks.size() == 2);
  CHECK_THAT(chunks[0].text, Catch::Contains("Sampler: DPM++ 2M Karras"));
  CHECK(nlohmann::json::parse(chunks[1].text)["scheduler"] == "dpmpp_2m_karras");

  command = bin_path() + " generate --model " + kModel.string() +
            " --prompt cube --steps 2 --width 64 --height 64 --scheduler \"Euler b\" -o " +
            (dir / "bad.png").string() + " > " + (dir / "bad.log").string() + " 2>&1";
  CHECK(std::system(command.c_str()) != 0);
  CHECK_FALSE(fs::exists(dir / "bad.png"));
  CHECK_THAT(read_file(dir / "bad.log"), Catch::Contains("Euler b") && Catch::Contains("euler_a"));
  remove_tree(dir);
}
