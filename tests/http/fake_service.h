// A scriptable in-memory ImageService for the HTTP tests: jobs only move when the test says so.
// Thread-safety: every method locks; event callbacks run on the thread that drives the job
// (the test thread), outside the lock, like the real core's event hub.
#pragma once

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>

#include "daemon/api/service.h"

namespace diffusiond::testing {

class FakeImageService : public ImageService {
 public:
  explicit FakeImageService(std::filesystem::path image_dir);

  // --- test controls ---
  void set_ready(bool ready) { ready_ = ready; }
  // Makes submit() throw ServiceError(queue_full, ..., retry_after_s).
  void set_queue_full(int retry_after_s) { queue_full_retry_ = retry_after_s; }
  // Image k: started on `device`, `steps` progress events, file written, image event; the job
  // becomes done after its last image.
  void run_image(const std::string& id, int k, const std::string& device);
  void run_all(const std::string& id, const std::string& device = "cpu:0");
  void start_image(const std::string& id, int k, const std::string& device);
  void progress_image(const std::string& id, int k, int step);
  void fail_image(const std::string& id, int k, const std::string& error);
  int subscribers(const std::string& id) const;
  // Waits (up to 10 s) until the job has at least n subscribers; false on timeout.
  bool wait_for_subscribers(const std::string& id, int n) const;
  std::vector<JobRequest> submitted() const;  // as normalised
  std::string last_job_id() const;
  static std::string png_bytes_for(const std::string& id, int k);

  // --- ImageService ---
  ModelInfo model_info() const override;
  std::optional<std::string> canonical_scheduler(const std::string& name) const override;
  using ImageService::submit;
  Submission submit(const GenerateRequest& request, const SubmitContext& context) override;
  SubmitContext last_context() const;  // what the HTTP layer passed with the latest submit
  std::optional<JobView> job(const std::string& id) const override;
  std::vector<JobView> jobs(std::optional<JobStatus> status, int limit,
                            const std::string& before_id = {}) const override;
  CancelResult cancel(const std::string& id) override;
  std::optional<std::string> image_path(const std::string& id, int k) const override;
  std::unique_ptr<Subscription> subscribe(const std::string& job_id,
                                          std::function<void(const JobEvent&)> on_event) override;
  // The fake keeps no image files of other formats and reads no metadata.
  std::optional<EncodedImage> encoded_image(const std::string&, int, ImageFormat,
                                            int) const override {
    return std::nullopt;
  }
  std::vector<std::pair<std::string, std::string>> image_text(std::string_view) const override {
    throw ServiceError(ErrorCode::invalid_request, "the fake reads no images", "invalid_image",
                       "image");
  }
  std::vector<JobView> client_jobs(const std::string&) const override { return {}; }
  std::vector<DeviceView> devices() const override;
  std::vector<LoraView> loras() const override { return loras_list; }
  std::vector<LoraView> loras_list;  // what loras() returns
  std::optional<ServiceError> not_ready() const override {
    if (ready_) return std::nullopt;
    return ServiceError(ErrorCode::unavailable, "the fake is set not ready", "loading", {}, 5);
  }
  std::string metrics_text() const override;

 private:
  struct Subscriber {
    std::string job_id;
    std::function<void(const JobEvent&)> fn;
  };
  class FakeSubscription;
  void emit(const JobEvent& e);
  void update_job_status_locked(JobView& job);

  std::filesystem::path dir_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<std::string> order_;  // submission order
  std::map<std::string, JobView> jobs_;
  std::vector<JobRequest> submitted_;
  SubmitContext last_context_;
  std::map<int, Subscriber> subs_;
  int next_sub_ = 0;
  int next_job_ = 0;
  std::mutex emit_mu_;  // serialises callbacks (events of a job arrive in order)
  std::atomic<bool> ready_{true};
  std::atomic<int> queue_full_retry_{0};
};

}  // namespace diffusiond::testing
