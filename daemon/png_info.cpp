#include "daemon/png_info.h"

#include <stdexcept>

#include "daemon/request_json.h"

namespace diffusiond {

PngGenerationInfo make_png_info(const JobView& job, int k, const std::string& device,
                                const std::string& sampler, const std::string& dtype) {
  if (k < 0 || k >= static_cast<int>(job.images.size()))
    throw std::out_of_range("job " + job.id + " has no image " + std::to_string(k));
  const auto& image = job.images[static_cast<std::size_t>(k)];
  const auto& r = job.request;
  PngGenerationInfo info;
  info.prompt = image.prompt;
  info.negative_prompt = r.negative_prompt;
  info.steps = r.steps;
  info.sampler = sampler;
  info.scheduler = r.scheduler;
  info.guidance_scale = r.guidance_scale;
  info.seed = image.seed;
  info.width = r.width;
  info.height = r.height;
  info.model_name = job.model;
  info.device = device;
  info.dtype = dtype;
  info.image_index = k;
  info.request = request_to_json(r);
  info.request["job_id"] = job.id;
  return info;
}

}  // namespace diffusiond
