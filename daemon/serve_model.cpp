#include "daemon/serve_model.h"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <system_error>

namespace diffusiond {

namespace {
const char* kTestModelNotice =
    "This is diffusiond's bundled test model (tiny-sd1, random weights): its images are noise. "
    "Point the daemon at a real Stable Diffusion model: `diffusiond serve --model "
    "/path/to/stable-diffusion-v1-5` (a diffusers folder), `--model "
    "stable-diffusion-v1-5/stable-diffusion-v1-5` (a Hugging Face cache id), or set "
    "DIFFUSIOND_MODEL / `model =` in the config file.";
}  // namespace

std::vector<std::filesystem::path> bundled_model_candidates(
    const std::filesystem::path& executable) {
  std::vector<std::filesystem::path> out;
  if (const char* env = std::getenv("DIFFUSIOND_SOURCE_DIR"); env && *env)
    out.push_back(std::filesystem::path(env) / "tests/fixtures/tiny-sd1");
#ifdef DIFFUSIOND_SOURCE_DIR
  out.push_back(std::filesystem::path(DIFFUSIOND_SOURCE_DIR) / "tests/fixtures/tiny-sd1");
#endif
  const auto dir = executable.parent_path();
  if (!dir.empty()) {
    out.push_back(dir / "../share/diffusiond/tiny-sd1");   // installed: bin/ -> share/diffusiond
    out.push_back(dir / "../../tests/fixtures/tiny-sd1");  // build tree: build/daemon/diffusiond
  }
#ifdef DIFFUSIOND_DATADIR
  out.push_back(std::filesystem::path(DIFFUSIOND_DATADIR) / "tiny-sd1");
#endif
  return out;
}

ModelChoice choose_model(const std::string& model_option, const std::string& variant,
                         const std::filesystem::path& executable, const std::string& model_config) {
  if (!model_option.empty())
    return {resolve_model(model_option, variant, model_config), "--model", false, ""};
  if (const char* env = std::getenv("DIFFUSIOND_MODEL"); env && *env)
    return {resolve_model(env, variant, model_config), "$DIFFUSIOND_MODEL", false, ""};
  if (!model_config.empty())
    throw ModelNotFound("--model-config " + model_config + " needs a single-file --model");
  for (const char* repo :
       {"stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"}) {
    try {
      return {resolve_model(repo, variant), "the Hugging Face cache", false, ""};
    } catch (const ModelNotFound&) {
    }
  }
  std::string tried;
  for (const auto& candidate : bundled_model_candidates(executable)) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(candidate / "model_index.json", ec)) {
      ModelChoice choice{resolve_model(std::filesystem::weakly_canonical(candidate, ec).string()),
                         "bundled", true, kTestModelNotice};
      choice.folder.name = "tiny-sd1 (test model, random weights)";
      return choice;
    }
    tried += "\n  " + candidate.string();
  }
  throw ModelNotFound(
      "no model configured: give --model (a diffusers folder or a Hugging Face cache id) or set "
      "DIFFUSIOND_MODEL; no Stable Diffusion 1.5 was found in the Hugging Face cache (" +
      hf_hub_cache_dir().string() + ") and the bundled test model is not at any of:" + tried);
}

ServedModels choose_served_models(const std::string& model_option, const std::string& models_dir,
                                  const std::string& variant, int default_steps,
                                  const std::filesystem::path& executable,
                                  const std::string& model_config) {
  ServedModels out;
  if (models_dir.empty()) {
    out.choice = choose_model(model_option, variant, executable, model_config);
    ModelSource only = describe_folder(out.choice.folder, default_steps);
    only.info.is_default = true;
    out.models.push_back(std::move(only));
    return out;
  }
  ModelLibrary library = scan_models_dir(models_dir, variant, default_steps);
  for (const auto& why : library.skipped) spdlog::warn("--models-dir: skipped {}", why);
  std::string spec = model_option, source = "--model";
  if (spec.empty())
    if (const char* env = std::getenv("DIFFUSIOND_MODEL"); env && *env) {
      spec = env;
      source = "$DIFFUSIOND_MODEL";
    }
  std::vector<ModelInfo> infos;
  for (const auto& m : library.models) infos.push_back(m.info);
  if (spec.empty() || find_model(infos, spec)) {
    out.models = served_models(nullptr, std::move(library), spec);
    for (const auto& m : out.models)
      if (m.info.is_default) out.choice.folder = m.folder;
    out.choice.source =
        spec.empty() ? "the first entry of --models-dir" : source + " in --models-dir";
    return out;
  }
  out.choice = choose_model(spec, variant, executable, model_config);
  out.choice.source = source;
  const ModelSource first = describe_folder(out.choice.folder, default_steps);
  out.models = served_models(&first, std::move(library));
  return out;
}

}  // namespace diffusiond
