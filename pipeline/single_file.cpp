// Ref: diffusers v0.27.2 loaders/single_file.py (from_single_file: config= / original_config_file=)
// and single_file_utils.py (infer_original_config_file, infer_model_type,
// create_scheduler_from_ldm); AUTOMATIC1111 modules/sd_models_config.py (a checkpoint's sibling
// .yaml wins over guessing).
#include "pipeline/single_file.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <system_error>

#include "pipeline/media/config_util.h"
#include "pipeline/media/safetensors_map.h"

namespace diffusiond {
namespace fs = std::filesystem;

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

std::string unquote(std::string v) {
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
    return v.substr(1, v.size() - 2);
  return v;
}

// "a.b.c" -> value for every `key: value` line, the path made of the enclosing keys. List items
// ("- key: value") keep their parent's path; flow lists stay text. Enough for LDM configs.
std::map<std::string, std::string> flatten_yaml(std::istream& in) {
  std::map<std::string, std::string> out;
  std::vector<std::pair<std::size_t, std::string>> stack;  // (indent, key)
  std::string line;
  while (std::getline(in, line)) {
    if (const auto hash = line.find(" #"); hash != std::string::npos) line.resize(hash);
    const auto first = line.find_first_not_of(' ');
    if (first == std::string::npos || line[first] == '#') continue;
    std::size_t indent = first;
    std::string content = trim(line.substr(first));
    while (content.rfind("- ", 0) == 0) {
      content = trim(content.substr(2));
      indent += 2;
    }
    const auto colon = content.find(':');
    if (colon == std::string::npos || (colon + 1 < content.size() && content[colon + 1] != ' '))
      continue;  // a list scalar or a URL-like value
    while (!stack.empty() && stack.back().first >= indent) stack.pop_back();
    const std::string key = trim(content.substr(0, colon));
    const std::string value = trim(content.substr(colon + 1));
    std::string path;
    for (const auto& [_, k] : stack) path += k + ".";
    if (value.empty()) {
      stack.emplace_back(indent, key);
    } else {
      out[path + key] = unquote(value);
    }
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

fs::path executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

// SD 1.x/2.x need a StableDiffusionPipeline config, SDXL a StableDiffusionXLPipeline one.
void check_config_fits(const ModelFolder& m, LdmLayout layout, const std::string& file) {
  const auto it = m.model_index.find("_class_name");
  const bool xl_config = it != m.model_index.end() && it->is_string() &&
                         it->get<std::string>() == "StableDiffusionXLPipeline";
  const bool xl_file = layout == LdmLayout::kSDXL;
  if (xl_config != xl_file) {
    throw ConfigError(file + " is an " + layout_name(layout) + " checkpoint but " +
                      m.config_source + " is " + (xl_config ? "an SDXL" : "an SD 1.x/2.x") +
                      " model (" + (m.root / "model_index.json").string() + ")");
  }
}

}  // namespace

LdmYaml read_ldm_yaml(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path.string() + ": cannot read");
  const auto values = flatten_yaml(in);
  auto get = [&](const std::string& key) -> std::string {
    const auto it = values.find(key);
    return it == values.end() ? "" : it->second;
  };
  LdmYaml out;
  out.v_prediction = get("model.params.parameterization") == "v";
  const std::string unet_ctx = get("model.params.unet_config.params.context_dim");
  const std::string sgm_ctx = get("model.params.network_config.params.context_dim");
  const std::string cond = get("model.params.cond_stage_config.target");
  if (sgm_ctx == "2048") {
    out.layout = LdmLayout::kSDXL;
  } else if (sgm_ctx == "1280") {
    out.layout = LdmLayout::kSDXLRefiner;
  } else if (unet_ctx == "1024" || ends_with(cond, "FrozenOpenCLIPEmbedder")) {
    out.layout = LdmLayout::kSD2;
  } else if (unet_ctx == "768" || ends_with(cond, "FrozenCLIPEmbedder")) {
    out.layout = LdmLayout::kSD1;
  }
  return out;
}

const std::vector<std::string>& known_families() {
  static const std::vector<std::string> families = {"sd15",     "sd21",      "sd21-base",
                                                    "sd-turbo", "sdxl-base", "sdxl-turbo"};
  return families;
}

std::vector<fs::path> family_config_candidates() {
  std::vector<fs::path> out;
  if (const char* env = std::getenv("DIFFUSIOND_SOURCE_DIR"); env && *env)
    out.push_back(fs::path(env) / "models/configs");
#ifdef DIFFUSIOND_SOURCE_DIR
  out.push_back(fs::path(DIFFUSIOND_SOURCE_DIR) / "models/configs");
#endif
  const fs::path dir = executable_dir();
  if (!dir.empty()) {
    out.push_back(dir / "../share/diffusiond/configs");  // installed: bin/ -> share/diffusiond
    out.push_back(dir / "../../models/configs");         // build tree: build/daemon/diffusiond
  }
#ifdef DIFFUSIOND_DATADIR
  out.push_back(fs::path(DIFFUSIOND_DATADIR) / "configs");
#endif
  return out;
}

fs::path family_config_dir(const std::string& family) {
  std::string tried;
  for (const auto& base : family_config_candidates()) {
    std::error_code ec;
    if (fs::is_regular_file(base / family / "model_index.json", ec))
      return fs::weakly_canonical(base / family, ec);
    tried += "\n  " + (base / family).string();
  }
  throw ModelNotFound("the shipped configs of the '" + family +
                      "' family are not at any of:" + tried +
                      "\n(install diffusiond, or give --model-config DIR: a diffusers folder)");
}

ModelFolder resolve_single_file(const fs::path& file, const std::string& model_config) {
  const std::string path = file.string();
  const auto map = SafetensorsMap::open(file);  // the header only; throws on a bad file
  const LdmCheckpoint ckpt = map_ldm_checkpoint(map->tensors(), path);
  if (ckpt.layout == LdmLayout::kSDXLRefiner) {
    throw LdmLayoutError(path +
                         ": an SDXL refiner checkpoint: the refiner is an img2img model "
                         "(StableDiffusionXLImg2ImgPipeline), and diffusiond runs text-to-image "
                         "only");
  }

  ModelFolder m;
  nlohmann::json overrides = nlohmann::json::object();
  if (!model_config.empty()) {
    if (fs::is_regular_file(model_config)) {
      throw ModelNotFound("--model-config " + model_config +
                          ": give a diffusers folder (model_index.json, its component configs, "
                          "tokenizer and scheduler), not a file");
    }
    m = resolve_model(model_config);
    m.config_source = "--model-config " + model_config;
  } else {
    fs::path yaml = file;
    yaml.replace_extension(".yaml");
    std::optional<LdmYaml> hints;
    if (fs::is_regular_file(yaml)) hints = read_ldm_yaml(yaml);
    if (hints && hints->layout && *hints->layout != ckpt.layout) {
      throw ConfigError(yaml.string() + " describes an " + layout_name(*hints->layout) +
                        " model but " + path + " is an " + layout_name(ckpt.layout) +
                        " checkpoint");
    }
    const bool turbo = lower(file.stem().string()).find("turbo") != std::string::npos;
    std::string family;
    std::string why = std::string(layout_name(ckpt.layout)) + " recognised from the keys";
    switch (ckpt.layout) {
      case LdmLayout::kSD1:
        family = "sd15";
        break;
      case LdmLayout::kSD2:
        if (hints) {
          family = hints->v_prediction ? "sd21" : (turbo ? "sd-turbo" : "sd21-base");
          why += std::string(", ") + (hints->v_prediction ? "v-prediction" : "epsilon") + " from " +
                 yaml.string();
        } else {
          family = turbo ? "sd-turbo" : "sd21";
          if (!turbo) why += " (768-v: give a sibling .yaml for a 512 epsilon model)";
        }
        break;
      case LdmLayout::kSDXL:
        family = turbo ? "sdxl-turbo" : "sdxl-base";
        break;
      case LdmLayout::kSDXLRefiner:
        break;
    }
    if (turbo && family.find("turbo") != std::string::npos) why += ", Turbo from the file name";
    if (hints && hints->v_prediction && family != "sd21") {
      overrides["prediction_type"] = "v_prediction";
      why += ", v-prediction from " + yaml.string();
    }
    m = resolve_model(family_config_dir(family).string());
    m.config_source = "shipped configs '" + family + "' (" + why + ")";
  }
  m.name = path;
  m.variant.clear();
  m.checkpoint = fs::absolute(file);
  m.scheduler_overrides = overrides;
  check_config_fits(m, ckpt.layout, path);
  return m;
}

}  // namespace diffusiond
