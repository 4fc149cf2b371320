// diffusers' golden txt2img run of the tiny-sd1 fixture (golden/pipeline.json, .png): the
// parameters it used and the image it made, for the pipeline and GPU tests.
// Thread-safety: free functions, no state.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "pipeline/media/config_util.h"
#include "pipeline/media/png.h"
#include "pipeline/txt2img.h"

namespace diffusiond::testing {

inline Txt2ImgParams golden_pipeline_params(const std::filesystem::path& model_dir) {
  const auto meta = read_json_file(model_dir / "golden" / "pipeline.json");
  Txt2ImgParams p;
  p.prompts = {meta.at("prompt").get<std::string>()};
  p.negative_prompt = meta.at("negative_prompt").get<std::string>();
  p.seed = meta.at("seed").get<std::uint64_t>();
  p.steps = meta.at("steps").get<int>();
  p.guidance_scale = meta.at("guidance_scale").get<double>();
  p.width = meta.at("width").get<int>();
  p.height = meta.at("height").get<int>();
  return p;
}

inline RgbImage golden_pipeline_image(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "golden" / "pipeline.png";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::stringstream bytes;
  bytes << in.rdbuf();
  return decode_png(bytes.str());
}

}  // namespace diffusiond::testing
