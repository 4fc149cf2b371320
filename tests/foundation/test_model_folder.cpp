// Model folder resolution: local folders, the offline Hugging Face cache (env precedence,
// refs/main -> snapshots/REV), variants, and errors that list every place looked.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "pipeline/media/config_util.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/model_family.h"
#include "pipeline/model_folder.h"

namespace fs = std::filesystem;
using diffusiond::ModelNotFound;
using diffusiond::resolve_model;

namespace {

// Sets an environment variable for the scope of the object, restoring the old value after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Every test's folders live under one per-process root, removed when the tests end.
const fs::path& test_root() {
  struct Root {
    fs::path path = fs::temp_directory_path() / ("mf_test_" + std::to_string(::getpid()));
    ~Root() {
      std::error_code ignored;
      diffusiond::remove_tree(path, ignored);
    }
  };
  static const Root root;
  return root.path;
}

fs::path fresh_dir(const std::string& name) {
  fs::path d = test_root() / name;
  diffusiond::remove_tree(d);
  fs::create_directories(d);
  return d;
}

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

// Builds <cache>/models--ORG--NAME/{refs/main, snapshots/REV/model_index.json, unet/...}.
fs::path make_cached_repo(const fs::path& cache, const std::string& org_name,
                          const std::string& rev) {
  std::string folder = "models--" + org_name;
  folder.replace(folder.find('/'), 1, "--");
  fs::path repo = cache / folder;
  write_file(repo / "refs" / "main", rev + "\n");
  fs::path snap = repo / "snapshots" / rev;
  write_file(snap / "model_index.json", R"({"_class_name":"StableDiffusionPipeline"})");
  write_file(snap / "unet" / "diffusion_pytorch_model.safetensors", "x");
  write_file(snap / "unet" / "diffusion_pytorch_model.fp16.safetensors", "x");
  write_file(snap / "text_encoder" / "model.safetensors", "x");
  return snap;
}

}  // namespace

TEST_CASE("model folder: a local folder resolves with its components", "[model_folder]") {
  auto m = resolve_model(std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1");
  CHECK(m.model_index.at("_class_name") == "StableDiffusionPipeline");
  CHECK(m.config_path("unet") == m.root / "unet" / "config.json");
  CHECK(m.config_path("scheduler") == m.root / "scheduler" / "scheduler_config.json");
  CHECK(m.weights_path("unet").filename() == "diffusion_pytorch_model.safetensors");
  CHECK(m.weights_path("text_encoder").filename() == "model.safetensors");
}

TEST_CASE("model folder: HF cache precedence HF_HUB_CACHE > HF_HOME/hub > ~/.cache",
          "[model_folder]") {
  fs::path base = fresh_dir("precedence");
  {
    ScopedEnv a("HF_HUB_CACHE", std::nullopt), b("HUGGINGFACE_HUB_CACHE", std::nullopt),
        c("HF_HOME", std::nullopt), d("XDG_CACHE_HOME", std::nullopt), e("HOME", base.string());
    CHECK(diffusiond::hf_hub_cache_dir() == base / ".cache" / "huggingface" / "hub");
    ScopedEnv f("HF_HOME", (base / "hfhome").string());
    CHECK(diffusiond::hf_hub_cache_dir() == base / "hfhome" / "hub");
    ScopedEnv g("HF_HUB_CACHE", (base / "hubcache").string());
    CHECK(diffusiond::hf_hub_cache_dir() == base / "hubcache");
  }
}

TEST_CASE("model folder: repo id resolves through refs/main to its snapshot", "[model_folder]") {
  fs::path cache = fresh_dir("cache");
  fs::path snap = make_cached_repo(cache, "someorg/some-model", "0123abcd");
  // A second, stale snapshot must not be picked: refs/main decides.
  write_file(cache / "models--someorg--some-model/snapshots/ffff/model_index.json", "{}");
  ScopedEnv env("HF_HUB_CACHE", cache.string());

  auto m = resolve_model("someorg/some-model");
  CHECK(m.root == snap);
  CHECK(m.name == "someorg/some-model");
  CHECK(m.weights_path("unet") == snap / "unet" / "diffusion_pytorch_model.safetensors");

  auto fp16 = resolve_model("someorg/some-model", "fp16");
  CHECK(fp16.weights_path("unet") == snap / "unet" / "diffusion_pytorch_model.fp16.safetensors");
  // The text encoder has no fp16 file: the error names the file it looked for.
  CHECK_THROWS_WITH(fp16.weights_path("text_encoder"),
                    Catch::Contains("text_encoder/model.fp16.safetensors"));
}

TEST_CASE("model folder: an SDXL repo id in the HF cache, fp16 variant of both text encoders",
          "[model_folder][sdxl]") {
  fs::path cache = fresh_dir("sdxl-cache");
  fs::path snap = make_cached_repo(cache, "stabilityai/stable-diffusion-xl-base-1.0", "462165984");
  write_file(snap / "model_index.json", R"({"_class_name":"StableDiffusionXLPipeline"})");
  write_file(snap / "text_encoder" / "model.fp16.safetensors", "x");
  write_file(snap / "text_encoder_2" / "model.fp16.safetensors", "x");
  write_file(snap / "scheduler" / "scheduler_config.json",
             R"({"_class_name":"EulerDiscreteScheduler","timestep_spacing":"leading"})");
  ScopedEnv env("HF_HUB_CACHE", cache.string());
  auto m = resolve_model("stabilityai/stable-diffusion-xl-base-1.0", "fp16");
  CHECK(m.root == snap);
  CHECK(diffusiond::is_sdxl(m));
  CHECK(diffusiond::model_family(m) == diffusiond::ModelFamily::kSDXL);
  CHECK(m.weights_path("text_encoder_2") == snap / "text_encoder_2" / "model.fp16.safetensors");
  CHECK(m.weights_path("unet") == snap / "unet" / "diffusion_pytorch_model.fp16.safetensors");
  // sdxl-turbo ships EulerAncestral with trailing spacing: the Turbo family.
  write_file(snap / "scheduler" / "scheduler_config.json",
             R"({"_class_name":"EulerAncestralDiscreteScheduler","timestep_spacing":"trailing"})");
  CHECK(diffusiond::model_family(m) == diffusiond::ModelFamily::kSDXLTurbo);
}

TEST_CASE("model folder: HF_HOME/hub is used when HF_HUB_CACHE is unset", "[model_folder]") {
  fs::path home = fresh_dir("hfhome");
  fs::path snap = make_cached_repo(home / "hub", "org/m", "rev1");
  ScopedEnv a("HF_HUB_CACHE", std::nullopt), b("HUGGINGFACE_HUB_CACHE", std::nullopt),
      c("HF_HOME", home.string());
  CHECK(resolve_model("org/m").root == snap);
}

TEST_CASE("model folder: nothing found lists every place looked", "[model_folder]") {
  fs::path cache = fresh_dir("empty_cache");
  ScopedEnv env("HF_HUB_CACHE", cache.string());
  try {
    resolve_model("nobody/nothing");
    FAIL("expected ModelNotFound");
  } catch (const ModelNotFound& e) {
    std::string msg = e.what();
    CHECK_THAT(msg, Catch::Contains("nobody/nothing (no such folder)"));
    CHECK_THAT(msg, Catch::Contains((cache / "models--nobody--nothing/refs/main").string()));
  }
  // A cached repo whose refs/main points at a missing snapshot.
  fs::path repo = cache / "models--org--broken";
  write_file(repo / "refs" / "main", "deadbeef");
  CHECK_THROWS_WITH(resolve_model("org/broken"),
                    Catch::Contains("snapshots/deadbeef/model_index.json"));
  // A folder without model_index.json.
  fs::path bare = fresh_dir("bare");
  CHECK_THROWS_WITH(resolve_model(bare.string()), Catch::Contains("model_index.json"));
}

TEST_CASE("config helpers name the file and the key", "[config]") {
  nlohmann::json j = {{"hidden_size", 32}, {"name", "x"}};
  CHECK(diffusiond::require_key<int>(j, "hidden_size", "cfg.json") == 32);
  CHECK_THROWS_WITH(diffusiond::require_key<int>(j, "num_layers", "cfg.json"),
                    "cfg.json: missing required key 'num_layers'");
  CHECK_THROWS_WITH(diffusiond::require_key<int>(j, "name", "cfg.json"),
                    Catch::Contains("key 'name' has the wrong type"));
  CHECK(diffusiond::key_or<int>(j, "absent", 7, "cfg.json") == 7);
  fs::path bad = fresh_dir("badjson") / "config.json";
  write_file(bad, "{not json");
  CHECK_THROWS_WITH(diffusiond::read_json_file(bad), Catch::Contains("invalid JSON"));
}

TEST_CASE("config files written by Python's json may hold -Infinity, Infinity and NaN",
          "[config]") {
  using diffusiond::quote_python_non_finite;
  CHECK(quote_python_non_finite(R"({"a": -Infinity, "b": [Infinity, NaN], "c": 1.5})") ==
        R"({"a": "-Infinity", "b": ["Infinity", "NaN"], "c": 1.5})");
  // Inside strings (escaped quotes included) nothing changes.
  const std::string text = R"({"s": "NaN and -Infinity", "t": "say \"Infinity\" NaN"})";
  CHECK(quote_python_non_finite(text) == text);
  fs::path file = fresh_dir("nonfinite") / "scheduler_config.json";
  write_file(file, R"({"lambda_min_clipped": -Infinity, "name": "x NaN"})");
  const auto j = diffusiond::read_json_file(file);
  CHECK(j.at("lambda_min_clipped") == "-Infinity");
  CHECK(j.at("name") == "x NaN");
}

TEST_CASE("model folder: img2img, refiner and inpainting folders are refused by class",
          "[model_folder]") {
  for (const char* cls : {"StableDiffusionXLImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                          "KandinskyPipeline"}) {
    INFO(cls);
    const fs::path d = fresh_dir(std::string("class-") + cls);
    write_file(d / "model_index.json", std::string(R"({"_class_name":")") + cls + R"("})");
    try {
      resolve_model(d.string());
      FAIL("accepted " << cls);
    } catch (const std::exception& e) {
      const std::string what = e.what();
      CHECK_THAT(what, Catch::Contains(cls));
      CHECK_THAT(what, Catch::Contains("model_index.json"));
      CHECK_THAT(what, Catch::Contains("StableDiffusionXLPipeline"));  // what is served
    }
  }
}
