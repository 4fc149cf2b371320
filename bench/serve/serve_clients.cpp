#include "serve_clients.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "tests/support/http_client.h"

namespace diffusiond::bench {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using testing::HttpReply;

std::string bench_prompt(int i) {
  static const char* subjects[] = {"a lighthouse",    "a red fox",       "a bowl of fruit",
                                   "a city street",   "a mountain lake", "an old car",
                                   "a cat on a sofa", "a robot"};
  return std::string(subjects[i % 8]) + ", study " + std::to_string(i);
}

namespace {

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

}  // namespace

ClientRun run_clients(std::uint16_t port, int clients, const WorkSpec& work) {
  return run_clients(std::vector<std::uint16_t>{port}, clients, work);
}

ClientRun run_clients(const std::vector<std::uint16_t>& ports, int clients, const WorkSpec& work) {
  ClientRun run;
  std::mutex mu;
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      const std::uint16_t port = ports[static_cast<std::size_t>(c) % ports.size()];
      for (int i = next++; i < work.images; i = next++) {
        json body = {{"prompt", bench_prompt(i)},
                     {"steps", work.steps},
                     {"width", work.size},
                     {"height", work.size},
                     {"seed", 1000 + i}};
        if (!work.scheduler.empty()) body["scheduler"] = work.scheduler;
        if (work.guidance_scale >= 0) body["guidance_scale"] = work.guidance_scale;
        const auto t0 = Clock::now();
        HttpReply r;
        try {
          r = testing::http_request(port, "POST", "/generate", body.dump());
        } catch (const std::exception&) {
          std::lock_guard lock(mu);
          ++run.failures;
          continue;
        }
        const double submit = ms_since(t0);
        if (r.status != 202) {
          std::lock_guard lock(mu);
          ++run.failures;
          continue;
        }
        const std::string id = r.json()["id"];
        // Follow the job's events until it ends (no polling delay in the measurement).
        testing::RawConnection events(port, 600);
        events.send("GET /jobs/" + id + "/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        const bool streamed = events.read_to_close().rfind("HTTP/1.1 200", 0) == 0;
        const double e2e = ms_since(t0);
        if (!streamed) {  // an event stream refused would measure a timeout, not the daemon
          std::lock_guard lock(mu);
          ++run.failures;
          continue;
        }
        json job = testing::http_request(port, "GET", "/jobs/" + id).json();
        std::lock_guard lock(mu);
        if (job["status"] != "done") {
          ++run.failures;
          continue;
        }
        run.submit_ms.push_back(submit);
        run.end_to_end_ms.push_back(e2e);
        const auto& img = job["images"][0];
        run.device_ms.push_back(img["finished_ms"].get<double>() - img["started_ms"].get<double>());
        if (!job["timings"]["queue_wait_ms"].is_null()) {
          run.queue_wait_ms.push_back(job["timings"]["queue_wait_ms"].get<double>());
        }
        run.devices.push_back(img["device"].get<std::string>());
      }
    });
  }
  for (auto& t : threads) t.join();
  run.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  return run;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(rank);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size();
}

}  // namespace diffusiond::bench
