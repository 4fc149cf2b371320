#include "daemon/png_metadata.h"

#include <nlohmann/json.hpp>

#include <sstream>
#include <stdexcept>

#include "daemon/metrics.h"
#include "daemon/request_json.h"

namespace diffusiond {

PngTextChunks make_png_metadata(const JobView& job, int k, const std::string& device,
                                const std::string& sampler_display, const std::string& version) {
  if (k < 0 || k >= static_cast<int>(job.images.size()))
    throw std::out_of_range("job " + job.id + " has no image " + std::to_string(k));
  const auto& image = job.images[static_cast<std::size_t>(k)];
  const auto& r = job.request;
  std::ostringstream text;
  text << image.prompt << "\n";
  if (!r.negative_prompt.empty()) text << "Negative prompt: " << r.negative_prompt << "\n";
  text << "Steps: " << r.steps << ", Sampler: " << sampler_display
       << ", CFG scale: " << format_prometheus_value(r.guidance_scale) << ", Seed: " << image.seed
       << ", Size: " << r.width << "x" << r.height << ", Model: " << job.model
       << ", Version: diffusiond " << version;
  nlohmann::json json{{"job_id", job.id},
                      {"image", k},
                      {"prompt", image.prompt},
                      {"negative_prompt", r.negative_prompt},
                      {"seed", image.seed},
                      {"steps", r.steps},
                      {"guidance_scale", r.guidance_scale},
                      {"width", r.width},
                      {"height", r.height},
                      {"scheduler", r.scheduler},
                      {"model", job.model},
                      {"device", device},
                      {"version", version},
                      {"request", request_to_json(r)}};
  return {text.str(), json.dump()};
}

}  // namespace diffusiond
