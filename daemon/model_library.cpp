#include "daemon/model_library.h"

#include <algorithm>
#include <system_error>

#include "daemon/pipeline_params.h"
#include "pipeline/model_family.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/single_file.h"

namespace diffusiond {

namespace fs = std::filesystem;

namespace {
bool hidden(const fs::path& p) {
  const auto name = p.filename().string();
  return name.empty() || name.front() == '.';
}
bool checkpoint_file(const fs::path& p) {
  auto ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return ext == ".safetensors" || ext == ".ckpt";
}
std::int64_t file_bytes(const fs::path& p) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  return ec ? 0 : static_cast<std::int64_t>(size);
}
}  // namespace

ModelSource describe_folder(const ModelFolder& folder, int default_steps) {
  ModelSource m{model_info(folder, default_steps), folder};
  if (folder.is_single_file()) {  // --model FILE (with --model-config or its own configs)
    m.info.format = "single_file";
    m.info.path = folder.checkpoint.string();
    m.info.file_name = folder.checkpoint.filename().string();
    m.info.size_bytes = file_bytes(folder.checkpoint);
    m.info.hash_file = folder.checkpoint.string();
    return m;
  }
  m.info.format = "diffusers";
  for (const char* component : {"unet", "vae", "text_encoder", "text_encoder_2"}) {
    if (!folder.model_index.contains(component)) continue;
    try {
      m.info.size_bytes += file_bytes(folder.weights_path(component));
    } catch (const ModelNotFound&) {
    }
  }
  try {
    m.info.hash_file = folder.weights_path("unet").string();
  } catch (const ModelNotFound&) {
  }
  return m;
}

ModelSource describe_single_file(const fs::path& file, const std::string& name,
                                 const std::string& file_name, int default_steps) {
  ModelSource m;
  try {
    // Reads the header only: the family from the keys, its shipped configs (or a sibling yaml).
    m.folder = resolve_single_file(file);
    m.info = model_info(m.folder, default_steps);
  } catch (const std::exception& e) {
    // Listed all the same, with SD 1.x defaults: a request for it fails with this message when
    // load_pipeline() tries again, which is clearer than a model that silently is not there.
    m.folder = ModelFolder{};
    m.folder.root = file;
    m.info = ModelInfo{};
    const FamilyDefaults defaults = family_defaults(ModelFamily::kSD);
    m.info.family = family_name(ModelFamily::kSD);
    m.info.default_width = m.info.default_height = 512;
    m.info.default_steps = default_steps > 0 ? default_steps : defaults.steps;
    m.info.default_guidance_scale = defaults.guidance_scale;
    m.info.default_scheduler = "pndm";  // what the SD 1.x diffusers folders ship
    for (const auto& entry : scheduler_registry())
      m.info.schedulers.push_back({entry.name, entry.aliases});
    m.info.size_presets = size_presets(ModelFamily::kSD, 512);
  }
  m.folder.name = name;
  ModelInfo& info = m.info;
  info.name = name;
  info.path = file.string();
  info.format = "single_file";
  info.file_name = file_name;
  info.size_bytes = file_bytes(file);
  info.hash_file = file.string();
  return m;
}

ModelLibrary scan_models_dir(const fs::path& dir, const std::string& variant, int default_steps) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw ModelNotFound("--models-dir " + dir.string() + ": not a folder");
  ModelLibrary library;
  auto add = [&](const fs::path& path, const std::string& prefix) {
    const std::string stem = path.stem().string();
    try {
      if (fs::is_directory(path) && fs::is_regular_file(path / "model_index.json")) {
        ModelFolder folder = resolve_model(path.string(), variant);
        folder.name = prefix + path.filename().string();
        ModelSource m = describe_folder(folder, default_steps);
        m.info.file_name = folder.name;
        library.models.push_back(std::move(m));
      } else if (fs::is_regular_file(path) && checkpoint_file(path)) {
        library.models.push_back(describe_single_file(
            path, prefix + stem, prefix + path.filename().string(), default_steps));
      } else {
        return false;
      }
    } catch (const std::exception& e) {
      library.skipped.push_back(path.string() + ": " + e.what());
    }
    return true;
  };
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(dir, ec)) entries.push_back(e.path());
  if (ec) throw ModelNotFound("--models-dir " + dir.string() + ": " + ec.message());
  std::sort(entries.begin(), entries.end());
  for (const auto& path : entries) {
    if (hidden(path)) continue;
    if (add(path, "")) continue;
    std::error_code sub_ec;
    if (!fs::is_directory(path, sub_ec)) continue;
    std::vector<fs::path> inner;
    for (const auto& e : fs::directory_iterator(path, sub_ec)) inner.push_back(e.path());
    std::sort(inner.begin(), inner.end());
    for (const auto& p : inner)
      if (!hidden(p)) add(p, path.filename().string() + "/");
  }
  std::sort(library.models.begin(), library.models.end(),
            [](const ModelSource& a, const ModelSource& b) { return a.info.name < b.info.name; });
  return library;
}

std::vector<ModelSource> served_models(const ModelSource* default_model, ModelLibrary library,
                                       const std::string& default_spec) {
  std::vector<ModelSource> out;
  if (default_model) {
    out.push_back(*default_model);
    out.front().info.is_default = true;
    std::error_code ec;
    const auto root = fs::weakly_canonical(default_model->folder.location(), ec);
    for (auto& m : library.models) {
      std::error_code ec2;
      if (fs::weakly_canonical(m.folder.location(), ec2) == root) continue;  // the default
      out.push_back(std::move(m));
    }
    return out;
  }
  if (library.models.empty())
    throw ModelNotFound("the models dir holds no model (diffusers folders, .safetensors files)");
  std::vector<ModelInfo> infos;
  for (const auto& m : library.models) infos.push_back(m.info);
  const auto found = find_model(infos, default_spec);
  if (!found)
    throw ModelNotFound("--model " + default_spec + ": not in the models dir (" +
                        model_names(infos) + ")");
  out = std::move(library.models);
  out[*found].info.is_default = true;
  return out;
}

std::unique_ptr<StableDiffusion> load_pipeline(const ModelSource& model, torch::Device device,
                                               torch::ScalarType dtype) {
  if (model.info.format == "single_file" && !model.folder.is_single_file()) {
    ModelFolder folder = resolve_single_file(model.info.path);  // throws the loader's message
    folder.name = model.folder.name;
    return StableDiffusion::load(folder, device, dtype);
  }
  return StableDiffusion::load(model.folder, device, dtype);
}

}  // namespace diffusiond
