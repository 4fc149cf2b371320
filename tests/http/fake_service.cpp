#include "fake_service.h"

#include <algorithm>
#include <fstream>
#include <random>

namespace diffusiond::testing {

class FakeImageService::FakeSubscription : public Subscription {
 public:
  FakeSubscription(FakeImageService& s, int id) : s_(s), id_(id) {}
  ~FakeSubscription() override {
    std::lock_guard emit_lock(s_.emit_mu_);  // no callback runs after this returns
    std::lock_guard lock(s_.mu_);
    s_.subs_.erase(id_);
    s_.cv_.notify_all();
  }

 private:
  FakeImageService& s_;
  int id_;
};

FakeImageService::FakeImageService(std::filesystem::path image_dir) : dir_(std::move(image_dir)) {
  std::filesystem::create_directories(dir_);
}

ModelInfo FakeImageService::model_info() const {
  ModelInfo m;
  m.name = "fake-model";
  m.path = "/nowhere/fake-model";
  m.is_test_model = true;
  m.notice = "fake model for HTTP tests";
  m.default_width = 64;
  m.default_height = 64;
  m.default_steps = 3;
  m.default_guidance_scale = 7.5;
  m.default_scheduler = "pndm";
  m.schedulers = {
      {"pndm", {"PNDM"}}, {"euler_a", {"Euler a", "euler_ancestral"}}, {"ddim", {"DDIM"}}};
  return m;
}

std::optional<std::string> FakeImageService::canonical_scheduler(const std::string& name) const {
  auto lower = [](std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  for (const auto& s : model_info().schedulers) {
    if (lower(s.name) == lower(name)) return s.name;
    for (const auto& a : s.aliases)
      if (lower(a) == lower(name)) return s.name;
  }
  return std::nullopt;
}

SubmitContext FakeImageService::last_context() const {
  std::lock_guard lock(mu_);
  return last_context_;
}

Submission FakeImageService::submit(const GenerateRequest& asked, const SubmitContext& context) {
  {
    std::lock_guard lock(mu_);
    last_context_ = context;
  }
  if (int retry = queue_full_retry_.load(); retry > 0) {
    throw ServiceError(ErrorCode::queue_full, "the queue is full", "queue_full", {}, retry);
  }
  // The same normalisation as the real core's.
  const ModelInfo model = model_info();
  static thread_local std::mt19937 random{std::random_device{}()};
  const JobRequest request = normalise(
      asked, request_defaults(model),
      [this](const std::string& name) { return canonical_scheduler(name); }, RequestLimits{},
      static_cast<std::uint32_t>(random()), scheduler_names(model));
  JobView job;
  {
    std::lock_guard lock(mu_);
    char id[32];
    std::snprintf(id, sizeof id, "%016x", ++next_job_);  // daemon/api/job_id.h's shape
    job.id = id;
    job.request = request;
    job.model = "fake-model";
    job.created_ms = 1000;
    const int count = static_cast<int>(request.prompts.size()) * request.n;
    for (int k = 0; k < count; ++k) {
      ImageView img;
      img.index = k;
      img.prompt = request.prompts[k / request.n];
      img.seed = request.seed + k;
      img.steps = request.steps;
      job.images.push_back(img);
    }
    jobs_[job.id] = job;
    order_.push_back(job.id);
    submitted_.push_back(request);
  }
  JobEvent e;
  e.kind = JobEvent::Kind::queued;
  e.job_id = job.id;
  emit(e);
  return {job, false};
}

std::optional<JobView> FakeImageService::job(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  return it->second;
}

std::vector<JobView> FakeImageService::jobs(std::optional<JobStatus> status, int limit,
                                            const std::string& before_id) const {
  std::lock_guard lock(mu_);
  std::vector<JobView> out;
  auto it = order_.rbegin();
  if (!before_id.empty()) {
    it = std::find(order_.rbegin(), order_.rend(), before_id);
    if (it == order_.rend())
      throw ServiceError(ErrorCode::invalid_request, "no such job", "invalid_field", "before");
    ++it;
  }
  for (; it != order_.rend() && static_cast<int>(out.size()) < limit; ++it) {
    const JobView& j = jobs_.at(*it);
    if (!status || j.status == *status) out.push_back(j);
  }
  return out;
}

CancelResult FakeImageService::cancel(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return CancelResult::not_found;
    JobView& j = it->second;
    if (j.status == JobStatus::done || j.status == JobStatus::failed ||
        j.status == JobStatus::cancelled) {
      return CancelResult::already_finished;
    }
    j.status = JobStatus::cancelled;
    for (auto& img : j.images)
      if (img.status == ImageStatus::queued || img.status == ImageStatus::running)
        img.status = ImageStatus::cancelled;
  }
  JobEvent e;
  e.kind = JobEvent::Kind::cancelled;
  e.job_id = id;
  emit(e);
  return CancelResult::cancelled;
}

std::optional<std::string> FakeImageService::image_path(const std::string& id, int k) const {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || k < 0 || k >= static_cast<int>(it->second.images.size())) return {};
  if (!it->second.images[k].has_file) return {};
  return (dir_ / (id + "-" + std::to_string(k) + ".png")).string();
}

std::unique_ptr<Subscription> FakeImageService::subscribe(
    const std::string& job_id, std::function<void(const JobEvent&)> on_event) {
  std::lock_guard lock(mu_);
  const int id = next_sub_++;
  subs_[id] = Subscriber{job_id, std::move(on_event)};
  cv_.notify_all();
  return std::make_unique<FakeSubscription>(*this, id);
}

int FakeImageService::subscribers(const std::string& id) const {
  std::lock_guard lock(mu_);
  int n = 0;
  for (const auto& [k, s] : subs_) n += s.job_id == id;
  return n;
}

bool FakeImageService::wait_for_subscribers(const std::string& id, int n) const {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, std::chrono::seconds(10), [&] {
    int count = 0;
    for (const auto& [k, s] : subs_) count += s.job_id == id;
    return count >= n;
  });
}

std::vector<JobRequest> FakeImageService::submitted() const {
  std::lock_guard lock(mu_);
  return submitted_;
}

std::string FakeImageService::last_job_id() const {
  std::lock_guard lock(mu_);
  return order_.empty() ? "" : order_.back();
}

std::string FakeImageService::png_bytes_for(const std::string& id, int k) {
  // Not a real PNG: the HTTP layer streams files as they are; the signature keeps it honest.
  return std::string("\x89PNG\r\n\x1a\n", 8) + "fake image " + id + " #" + std::to_string(k);
}

void FakeImageService::emit(const JobEvent& e) {
  std::lock_guard emit_lock(emit_mu_);
  std::vector<std::function<void(const JobEvent&)>> targets;
  {
    std::lock_guard lock(mu_);
    for (const auto& [k, s] : subs_)
      if (s.job_id == e.job_id) targets.push_back(s.fn);
  }
  for (auto& fn : targets) fn(e);
}

void FakeImageService::update_job_status_locked(JobView& j) {
  bool all_done = true, any_failed = false, any_started = false;
  for (const auto& img : j.images) {
    all_done = all_done && (img.status == ImageStatus::done || img.status == ImageStatus::failed);
    any_failed = any_failed || img.status == ImageStatus::failed;
    any_started = any_started || img.status != ImageStatus::queued;
  }
  if (all_done) {
    j.status = any_failed ? JobStatus::failed : JobStatus::done;
    j.finished_ms = 3000;
    for (const auto& img : j.images)
      if (img.status == ImageStatus::failed && j.error.empty()) j.error = img.error;
  } else if (any_started) {
    j.status = JobStatus::running;
    if (j.started_ms == 0) j.started_ms = 2000;
  }
}

void FakeImageService::start_image(const std::string& id, int k, const std::string& device) {
  {
    std::lock_guard lock(mu_);
    JobView& j = jobs_.at(id);
    j.images[k].status = ImageStatus::running;
    j.images[k].device = device;
    update_job_status_locked(j);
  }
  JobEvent e;
  e.kind = JobEvent::Kind::started;
  e.job_id = id;
  e.image = k;
  e.device = device;
  emit(e);
}

void FakeImageService::progress_image(const std::string& id, int k, int step) {
  int steps;
  {
    std::lock_guard lock(mu_);
    JobView& j = jobs_.at(id);
    j.images[k].step = step;
    steps = j.images[k].steps;
  }
  JobEvent e;
  e.kind = JobEvent::Kind::progress;
  e.job_id = id;
  e.image = k;
  e.step = step;
  e.steps = steps;
  emit(e);
}

void FakeImageService::run_image(const std::string& id, int k, const std::string& device) {
  start_image(id, k, device);
  const int steps = job(id)->images[k].steps;
  for (int s = 1; s <= steps; ++s) progress_image(id, k, s);
  {
    std::ofstream f(dir_ / (id + "-" + std::to_string(k) + ".png"), std::ios::binary);
    f << png_bytes_for(id, k);
  }
  JobStatus status;
  {
    std::lock_guard lock(mu_);
    JobView& j = jobs_.at(id);
    j.images[k].status = ImageStatus::done;
    j.images[k].has_file = true;
    update_job_status_locked(j);
    status = j.status;
  }
  JobEvent e;
  e.kind = JobEvent::Kind::image;
  e.job_id = id;
  e.image = k;
  emit(e);
  if (status == JobStatus::done) {
    JobEvent d;
    d.kind = JobEvent::Kind::done;
    d.job_id = id;
    emit(d);
  }
}

void FakeImageService::run_all(const std::string& id, const std::string& device) {
  const int count = static_cast<int>(job(id)->images.size());
  for (int k = 0; k < count; ++k) run_image(id, k, device);
}

void FakeImageService::fail_image(const std::string& id, int k, const std::string& error) {
  JobStatus status;
  {
    std::lock_guard lock(mu_);
    JobView& j = jobs_.at(id);
    j.images[k].status = ImageStatus::failed;
    j.images[k].error = error;
    update_job_status_locked(j);
    status = j.status;
  }
  JobEvent e;
  e.kind = JobEvent::Kind::failed;
  e.job_id = id;
  e.image = k;
  e.error = error;
  emit(e);
  if (status == JobStatus::failed) {
    JobEvent f;
    f.kind = JobEvent::Kind::failed;
    f.job_id = id;
    f.error = job(id)->error;
    emit(f);
  }
}

std::vector<DeviceView> FakeImageService::devices() const {
  DeviceView a;
  a.name = "cpu:0";
  a.description = "fake CPU";
  a.loaded = ready_;
  DeviceView b = a;
  b.name = "cpu:1";
  return {a, b};
}

std::string FakeImageService::metrics_text() const {
  return "# HELP diffusiond_queue_depth Images waiting.\n"
         "# TYPE diffusiond_queue_depth gauge\n"
         "diffusiond_queue_depth 0\n";
}

}  // namespace diffusiond::testing
