#include "pipeline/model_family.h"

#include <algorithm>

#include "pipeline/media/config_util.h"

namespace diffusiond {

bool is_sdxl(const ModelFolder& model) {
  const auto it = model.model_index.find("_class_name");
  return it != model.model_index.end() && it->is_string() &&
         it->get<std::string>() == "StableDiffusionXLPipeline";
}

ModelFamily model_family(const ModelFolder& model) {
  const auto path = model.config_path("scheduler");
  const auto config = model.scheduler_config();
  const bool turbo =
      key_or<std::string>(config, "_class_name", "", path.string()) ==
          "EulerAncestralDiscreteScheduler" &&
      key_or<std::string>(config, "timestep_spacing", "", path.string()) == "trailing";
  if (is_sdxl(model)) return turbo ? ModelFamily::kSDXLTurbo : ModelFamily::kSDXL;
  return turbo ? ModelFamily::kSDTurbo : ModelFamily::kSD;
}

FamilyDefaults family_defaults(ModelFamily family) {
  switch (family) {
    case ModelFamily::kSDXL:
      return {30, 5.0};
    case ModelFamily::kSDTurbo:
    case ModelFamily::kSDXLTurbo:
      return {1, 0.0};
    case ModelFamily::kSD:
      break;
  }
  return {50, 7.5};
}

std::string family_name(ModelFamily family) {
  switch (family) {
    case ModelFamily::kSDXL:
      return "sdxl";
    case ModelFamily::kSDTurbo:
      return "sd-turbo";
    case ModelFamily::kSDXLTurbo:
      return "sdxl-turbo";
    case ModelFamily::kSD:
      break;
  }
  return "sd";
}

std::vector<std::array<int, 2>> size_presets(ModelFamily family, int native) {
  auto round8 = [](double x) { return std::max(8, static_cast<int>(x / 8.0 + 0.5) * 8); };
  std::vector<std::array<int, 2>> out;
  if (family == ModelFamily::kSDXL || family == ModelFamily::kSDXLTurbo) {
    static const int buckets[][2] = {{1024, 1024}, {1152, 896}, {896, 1152},
                                     {1216, 832},  {832, 1216}, {1344, 768},
                                     {768, 1344},  {1536, 640}, {640, 1536}};
    const double scale = native / 1024.0;
    for (const auto& b : buckets) out.push_back({round8(b[0] * scale), round8(b[1] * scale)});
  } else {
    out = {{native, native}, {native, round8(native * 1.5)}, {round8(native * 1.5), native}};
  }
  // Scaling a small native size can make two buckets equal: keep the first of each.
  std::vector<std::array<int, 2>> unique;
  for (const auto& s : out)
    if (std::find(unique.begin(), unique.end(), s) == unique.end()) unique.push_back(s);
  return unique;
}

bool force_zeros_for_empty_prompt(const ModelFolder& model) {
  return key_or<bool>(model.model_index, "force_zeros_for_empty_prompt", true,
                      (model.root / "model_index.json").string());
}

}  // namespace diffusiond
