// CoreService's image reads for the front ends: an image in the format asked (PNG as written,
// JPEG/WebP made from it), the metadata of an uploaded image, and a caller's unfinished jobs.
// See core_service.h for the rules.
#include <algorithm>
#include <fstream>
#include <iterator>

#include "daemon/core_service.h"
#include "daemon/core_shared.h"
#include "pipeline/media/image_formats.h"

namespace diffusiond {

std::optional<EncodedImage> CoreService::encoded_image(const std::string& id, int k,
                                                       ImageFormat format, int quality) const {
  const auto path = image_path(id, k);
  if (!path) return std::nullopt;
  std::ifstream in(*path, std::ios::binary);
  std::string png((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof())
    throw ServiceError(ErrorCode::internal,
                       "cannot read image " + std::to_string(k) + " of job '" + id + "'");
  if (png.empty()) return std::nullopt;  // removed meanwhile (retention)
  return encode_stored_png(png, id, k, format, quality);
}

std::vector<std::pair<std::string, std::string>> CoreService::image_text(
    std::string_view image_bytes) const {
  return uploaded_image_text(image_bytes);
}

std::vector<JobView> CoreService::client_jobs(const std::string& client) const {
  std::vector<const JobRecord*> mine;
  std::vector<JobView> out;
  std::lock_guard lock(mu_);
  for (const auto& [id, job] : active_)
    if (job.record.client == client && !is_terminal(job.record.view.status))
      mine.push_back(&job.record);
  std::sort(mine.begin(), mine.end(),
            [](const JobRecord* a, const JobRecord* b) { return a->seq < b->seq; });
  for (const auto* r : mine) out.push_back(r->view);
  return out;
}

}  // namespace diffusiond

namespace diffusiond {

void CoreService::task_preview(int, const TaskRef& task, RgbImage preview) {
  std::lock_guard lock(mu_);
  ActiveJob* job = find_locked(task.job_id);
  if (job && !is_terminal(job->record.view.status)) job->previews[task.image] = std::move(preview);
}

std::optional<EncodedImage> CoreService::preview(const std::string& id, int k) const {
  RgbImage image;
  {
    std::lock_guard lock(mu_);
    auto it = active_.find(id);
    if (it == active_.end()) return std::nullopt;
    auto p = it->second.previews.find(k);
    if (p == it->second.previews.end()) return std::nullopt;
    image = p->second;  // a latent-sized copy; encoded outside the lock
  }
  return EncodedImage{encode_png(image), ImageFormat::png};
}

}  // namespace diffusiond
