// Ref: diffusers v0.27.2 pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py
// (StableDiffusionXLPipeline._get_add_time_ids; __call__: negative_add_time_ids from
// negative_original_size / negative_crops_coords_top_left / negative_target_size only when
// both negative sizes are given, else the positive add_time_ids).
#include "pipeline/micro_conditioning.h"

#include <array>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffusiond {
namespace {

using Pair = std::optional<std::array<int, 2>>;

torch::Tensor time_ids(const std::array<int, 2>& original, const std::array<int, 2>& crops,
                       const std::array<int, 2>& target, torch::ScalarType dtype) {
  const std::vector<float> ids = {float(original[0]), float(original[1]), float(crops[0]),
                                  float(crops[1]),    float(target[0]),   float(target[1])};
  return torch::tensor(ids, torch::kFloat32).unsqueeze(0).to(dtype);  // [1, 6]
}

}  // namespace

void check_micro_conditioning(const Txt2ImgParams& p, bool xl) {
  struct Field {
    const Pair& value;
    const char* name;
    int lo;
  };
  const Field fields[] = {{p.original_size, "original_size", 1},
                          {p.crops_coords_top_left, "crops_coords_top_left", 0},
                          {p.target_size, "target_size", 1},
                          {p.negative_original_size, "negative_original_size", 1},
                          {p.negative_crops_coords_top_left, "negative_crops_coords_top_left", 0},
                          {p.negative_target_size, "negative_target_size", 1}};
  for (const Field& f : fields) {
    if (!f.value) continue;
    if (!xl)
      throw std::invalid_argument(std::string(f.name) +
                                  ": SDXL micro-conditioning applies to SDXL models only");
    if ((*f.value)[0] < f.lo || (*f.value)[1] < f.lo)
      throw std::invalid_argument(std::string(f.name) + " must hold two numbers of at least " +
                                  std::to_string(f.lo));
  }
}

AddTimeIds add_time_ids(const Txt2ImgParams& p, torch::ScalarType dtype) {
  const std::array<int, 2> output = {p.height, p.width};
  const std::array<int, 2> no_crop = {0, 0};
  AddTimeIds ids;
  ids.cond = time_ids(p.original_size.value_or(output), p.crops_coords_top_left.value_or(no_crop),
                      p.target_size.value_or(output), dtype);
  ids.uncond =
      p.negative_original_size && p.negative_target_size
          ? time_ids(*p.negative_original_size, p.negative_crops_coords_top_left.value_or(no_crop),
                     *p.negative_target_size, dtype)
          : ids.cond;
  return ids;
}

}  // namespace diffusiond
