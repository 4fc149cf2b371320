#include "pipeline/model_folder.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "pipeline/media/config_util.h"
#include "pipeline/single_file.h"

namespace diffusiond {
namespace fs = std::filesystem;

namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : std::string();
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// "org/name" (or "name") -> "models--org--name", as huggingface_hub's repo_folder_name.
std::string repo_folder_name(const std::string& repo_id) {
  std::string out = "models--";
  for (char c : repo_id) {
    if (c == '/') {
      out += "--";
    } else {
      out += c;
    }
  }
  return out;
}

bool looks_like_repo_id(const std::string& spec) {
  if (spec.empty() || spec.front() == '/' || spec.front() == '.' || spec.back() == '/')
    return false;
  auto slash = spec.find('/');
  if (slash == std::string::npos) return true;
  return spec.find('/', slash + 1) == std::string::npos;
}

ModelFolder load_folder(const fs::path& root, const std::string& name, const std::string& variant) {
  ModelFolder m;
  m.root = root;
  m.name = name;
  m.variant = variant;
  m.model_index = read_json_file(root / "model_index.json");
  if (!m.model_index.is_object()) {
    throw ConfigError((root / "model_index.json").string() + ": not a JSON object");
  }
  // Text-to-image pipelines only: an SDXL refiner (StableDiffusionXLImg2ImgPipeline, no
  // text_encoder, aesthetic-score conditioning), inpainting or upscaling folders need inputs a
  // txt2img request does not have.
  const auto cls = m.model_index.find("_class_name");
  if (cls != m.model_index.end() && cls->is_string()) {
    const std::string name = cls->get<std::string>();
    if (name != "StableDiffusionPipeline" && name != "StableDiffusionXLPipeline")
      throw ConfigError(
          (root / "model_index.json").string() + ": a " + name.substr(0, 100) +
          " folder; diffusiond serves text-to-image models (StableDiffusionPipeline, "
          "StableDiffusionXLPipeline)" +
          (name.find("Img2Img") != std::string::npos || name.find("Inpaint") != std::string::npos
               ? " and has no image-to-image or inpainting pipeline"
               : ""));
  }
  return m;
}

}  // namespace

fs::path ModelFolder::config_path(const std::string& component) const {
  if (component == "scheduler") return root / component / "scheduler_config.json";
  return root / component / "config.json";
}

nlohmann::json ModelFolder::scheduler_config() const {
  nlohmann::json config = read_json_file(config_path("scheduler"));
  if (config.is_object()) config.update(scheduler_overrides);
  return config;
}

fs::path ModelFolder::weights_path(const std::string& component) const {
  if (is_single_file()) {
    throw std::logic_error("model '" + name + "' is a single-file checkpoint: its '" + component +
                           "' weights are a view of " + checkpoint.string() +
                           " (open_component_weights), not a file");
  }
  const std::string stem = component == "text_encoder" || component == "text_encoder_2"
                               ? "model"
                               : "diffusion_pytorch_model";
  const std::string file =
      variant.empty() ? stem + ".safetensors" : stem + "." + variant + ".safetensors";
  fs::path p = root / component / file;
  if (fs::is_regular_file(p)) return p;
  std::ostringstream msg;
  msg << "model '" << name << "': no weights for component '" << component << "': looked for "
      << p.string();
  if (variant.empty() && fs::is_regular_file(root / component / (stem + ".fp16.safetensors"))) {
    msg << " (only the fp16 variant is present: pass --variant fp16)";
  }
  if (fs::is_regular_file(root / component / (stem + ".bin"))) {
    msg << " (a PyTorch .bin is present; only safetensors is supported)";
  }
  throw ModelNotFound(msg.str());
}

fs::path hf_hub_cache_dir() {
  for (const char* var : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    std::string v = env_or_empty(var);
    if (!v.empty()) return fs::path(v);
  }
  std::string hf_home = env_or_empty("HF_HOME");
  if (!hf_home.empty()) return fs::path(hf_home) / "hub";
  std::string xdg = env_or_empty("XDG_CACHE_HOME");
  if (!xdg.empty()) return fs::path(xdg) / "huggingface" / "hub";
  std::string home = env_or_empty("HOME");
  return fs::path(home.empty() ? "/" : home) / ".cache" / "huggingface" / "hub";
}

ModelFolder resolve_model(const std::string& spec, const std::string& variant,
                          const std::string& model_config) {
  std::vector<std::string> looked;
  const fs::path as_path(spec);
  if (fs::is_regular_file(as_path)) return resolve_single_file(as_path, model_config);
  if (!model_config.empty()) {
    throw ModelNotFound("--model-config " + model_config + " applies to single-file checkpoints; " +
                        "'" + spec + "' is not a file");
  }
  if (fs::is_directory(as_path)) {
    if (fs::is_regular_file(as_path / "model_index.json")) {
      return load_folder(fs::absolute(as_path), spec, variant);
    }
    looked.push_back((as_path / "model_index.json").string() + " (folder exists, file missing)");
  } else {
    looked.push_back(as_path.string() + " (no such folder)");
  }

  if (looks_like_repo_id(spec)) {
    const fs::path repo_dir = hf_hub_cache_dir() / repo_folder_name(spec);
    const fs::path ref_file = repo_dir / "refs" / "main";
    std::ifstream ref(ref_file);
    if (!ref) {
      looked.push_back(ref_file.string() + " (HF cache: no refs/main)");
    } else {
      std::string revision;
      std::getline(ref, revision);
      revision = trim(revision);
      const fs::path snapshot = repo_dir / "snapshots" / revision;
      if (revision.empty()) {
        looked.push_back(ref_file.string() + " (HF cache: empty refs/main)");
      } else if (!fs::is_regular_file(snapshot / "model_index.json")) {
        looked.push_back((snapshot / "model_index.json").string() + " (HF cache snapshot)");
      } else {
        return load_folder(snapshot, spec, variant);
      }
    }
  }

  std::ostringstream msg;
  msg << "model '" << spec << "' not found; looked in:";
  for (const auto& l : looked) msg << "\n  - " << l;
  msg << "\n(HF cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub; "
         "models are resolved offline only)";
  throw ModelNotFound(msg.str());
}

}  // namespace diffusiond
