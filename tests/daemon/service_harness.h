// The CoreService test harness: a real store (SQLite in a temp dir), the real dispatcher, worker
// threads and PNG pool over the fake backend (fake_backend.h), and helpers to submit and wait.
// Used by the service tests (test_service.cpp, test_device_faults.cpp); one test thread.
#pragma once

#include <catch2/catch.hpp>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "daemon/core_service.h"
#include "fake_backend.h"
#include "pipeline/media/png.h"
#include "temp_dir.h"

namespace diffusiond::test {

using namespace std::chrono_literals;

// The service logs every job; keep the test output to warnings and errors.
inline const bool quiet_logs = [] {
  spdlog::set_level(spdlog::level::warn);
  return true;
}();

class Recorder {
 public:
  void operator()(const JobEvent& e) {
    std::lock_guard lock(mu_);
    events_.push_back(e);
    cv_.notify_all();
  }
  std::vector<JobEvent> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  bool wait_terminal(std::chrono::milliseconds timeout = 20s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& e : events_)
        if (e.image < 0 && (e.kind == JobEvent::Kind::done || e.kind == JobEvent::Kind::failed ||
                            e.kind == JobEvent::Kind::cancelled))
          return true;
      return false;
    });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<JobEvent> events_;
};

inline std::string kinds(const std::vector<JobEvent>& events) {
  std::string out;
  for (const auto& e : events) {
    out += to_string(e.kind);
    if (e.image >= 0) out += "(" + std::to_string(e.image) + ")";
    out += " ";
  }
  return out;
}

inline GenerateRequest request(std::vector<std::string> prompts, int n = 1, int steps = 3) {
  GenerateRequest r;
  r.prompts = std::move(prompts);
  r.n = n;
  r.steps = steps;
  r.seed = 42;
  r.width = 8;
  r.height = 4;
  r.scheduler = "euler_a";
  return r;
}

// The real PNG encoder, refusing prompts that contain BADPNG.
inline PngEncoder png_encoder() {
  return [](const RgbImage& image, const PngGenerationInfo& info) {
    if (info.prompt.find("BADPNG") != std::string::npos)
      throw std::runtime_error("encoder refused");
    return encode_png_with_metadata(image, info);
  };
}

// The fake backend makes tiny images (8x4): the core's limits are set to allow them.
inline CoreOptions tiny_image_options() {
  CoreOptions options;
  options.limits.min_side = 4;
  options.limits.side_multiple = 4;
  return options;
}

struct Harness {
  TempDir dir;
  std::unique_ptr<JobStore> store;
  FakeBackend backend;
  CoreOptions options = tiny_image_options();
  std::unique_ptr<CoreService> service;

  ~Harness() {  // never leave a worker waiting on a gate, even when a check failed
    backend.release_loads();
    backend.release();
    service.reset();
  }

  void start(const std::string& devices, bool wait = true) {
    if (!store) store = JobStore::open(dir.path());
    service = std::make_unique<CoreService>(*store, backend, parse_devices(devices, 0), options,
                                            png_encoder());
    service->start();
    if (wait) REQUIRE(service->wait_loaded(20s));
  }
  void restart(const std::string& devices) {
    service.reset();
    store.reset();
    start(devices);
  }
  JobView wait_finished(const std::string& id, std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto view = service->job(id);
      REQUIRE(view);
      bool all_ended = is_terminal(view->status);
      for (const auto& image : view->images) all_ended = all_ended && is_terminal(image.status);
      if (all_ended) {
        service->wait_store_written();  // so that the store shows it too
        return *view;
      }
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      std::this_thread::sleep_for(2ms);
    }
  }
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

}  // namespace diffusiond::test
