// bench_fleet: a fleet of N daemons x `cpu*1` sharing one PostgreSQL queue (a real server,
// initdb'd in a temporary folder, fsync on) against one daemon x `cpu*N` on its SQLite store,
// same clients, same images. Not a test: prints a Markdown table for bench/RESULTS.md.
//
//   bench_fleet [--daemons 3] [--clients 6] [--images 48] [--steps 10] [--size 64] [--rounds 1]
//               [--model DIR] [--bin diffusiond]
// Clients are spread over the fleet's daemons (client c talks to daemon c % N).
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <thread>

#include "pipeline/media/posix_fs.h"
#include "serve_clients.h"
#include "tests/support/daemon_process.h"
#include "tests/support/http_client.h"
#include "tests/support/pg_server.h"

using namespace diffusiond;
using namespace diffusiond::bench;

namespace {

// The value of an unlabelled sample in Prometheus text ("name value"), 0 if absent.
double metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  return 0;
}

struct Result {
  ClientRun run;
  std::map<std::string, int> per_runner;
  double claim_sum = 0, claim_count = 0, write_sum = 0, write_count = 0;
};

std::string runner_of(const std::string& device) {  // "<daemon>/cpu" or "cpu:1"
  return device;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_fleet: N daemons on one PostgreSQL vs one daemon with N devices on SQLite"};
  int daemons = 3, clients = 6, rounds = 1;
  WorkSpec work;
  work.images = 48;
  std::string model = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1";
  std::string bin = DIFFUSIOND_EXE;
  app.add_option("--daemons", daemons, "Daemons in the fleet (and devices of the SQLite daemon)");
  app.add_option("--clients", clients, "Concurrent HTTP clients");
  app.add_option("--images", work.images, "Images in total (one per job)");
  app.add_option("--steps", work.steps, "Denoising steps per image");
  app.add_option("--size", work.size, "Width and height");
  app.add_option("--rounds", rounds, "Runs of each, alternating");
  app.add_option("--model", model, "Model folder");
  app.add_option("--bin", bin, "diffusiond executable");
  CLI11_PARSE(app, argc, argv);
  setenv("DIFFUSIOND_BIN", bin.c_str(), 1);
  const auto base =
      std::filesystem::temp_directory_path() / ("bench-fleet-" + std::to_string(::getpid()));

  auto warm_up = [&](const std::vector<std::uint16_t>& ports) {
    WorkSpec warm = work;
    warm.images = daemons;
    warm.steps = 2;
    run_clients(ports, daemons, warm);
  };

  auto fleet_run = [&]() {
    Result r;
    testing::PgServer pg(/*durable=*/true);
    std::vector<std::unique_ptr<testing::DaemonProcess>> fleet;
    std::vector<std::uint16_t> ports;
    for (int i = 0; i < daemons; ++i) {
      fleet.push_back(std::make_unique<testing::DaemonProcess>(
          base / ("pg-" + std::to_string(i)),
          std::vector<std::string>{"--devices", "cpu", "--threads", "1", "--store", pg.url(),
                                   "--log-level", "warn"},
          model));
      ports.push_back(fleet.back()->port());
    }
    warm_up(ports);
    double claim0 = 0, claimn0 = 0, write0 = 0, writen0 = 0;
    for (auto port : ports) {
      const std::string m = testing::http_request(port, "GET", "/metrics").body;
      claim0 += metric(m, "diffusiond_claim_seconds_sum");
      claimn0 += metric(m, "diffusiond_claim_seconds_count");
      write0 += metric(m, "diffusiond_store_write_seconds_sum");
      writen0 += metric(m, "diffusiond_store_write_seconds_count");
    }
    r.run = run_clients(ports, clients, work);
    for (auto port : ports) {
      const std::string m = testing::http_request(port, "GET", "/metrics").body;
      r.claim_sum += metric(m, "diffusiond_claim_seconds_sum");
      r.claim_count += metric(m, "diffusiond_claim_seconds_count");
      r.write_sum += metric(m, "diffusiond_store_write_seconds_sum");
      r.write_count += metric(m, "diffusiond_store_write_seconds_count");
    }
    r.claim_sum -= claim0;
    r.claim_count -= claimn0;
    r.write_sum -= write0;
    r.write_count -= writen0;
    fleet.clear();
    for (int i = 0; i < daemons; ++i) remove_tree(base / ("pg-" + std::to_string(i)));
    for (const auto& d : r.run.devices) ++r.per_runner[runner_of(d)];
    return r;
  };
  auto sqlite_run = [&]() {
    Result r;
    {
      testing::DaemonProcess d(base / "sqlite",
                               {"--devices", "cpu*" + std::to_string(daemons), "--threads",
                                std::to_string(daemons), "--log-level", "warn"},
                               model);
      warm_up({d.port()});
      r.run = run_clients(d.port(), clients, work);
    }
    remove_tree(base / "sqlite");
    for (const auto& d : r.run.devices) ++r.per_runner[runner_of(d)];
    return r;
  };

  std::printf("\nbench_fleet: %d images (%dx%d, %d steps, %s), %d clients, %u cores\n", work.images,
              work.size, work.size, work.steps, work.scheduler.c_str(), clients,
              std::thread::hardware_concurrency());
  int failures = 0;
  for (int round = 0; round < rounds; ++round) {
    const Result f = fleet_run();
    const Result s = sqlite_run();
    failures += f.run.failures + s.run.failures;
    auto spread = [](const Result& r) {
      std::string out;
      for (const auto& [k, n] : r.per_runner) out += (out.empty() ? "" : ", ") + std::to_string(n);
      return out;
    };
    std::printf(
        "\nround %d\n\n| measure | %d daemons x cpu*1, one PostgreSQL | 1 daemon x cpu*%d, "
        "SQLite |\n|---|---|---|\n",
        round + 1, daemons, daemons);
    std::printf("| images done / failed | %zu / %d | %zu / %d |\n", f.run.end_to_end_ms.size(),
                f.run.failures, s.run.end_to_end_ms.size(), s.run.failures);
    std::printf("| images per device | %s | %s |\n", spread(f).c_str(), spread(s).c_str());
    std::printf("| throughput | %.2f images/s | %.2f images/s |\n",
                f.run.end_to_end_ms.size() / f.run.wall_s,
                s.run.end_to_end_ms.size() / s.run.wall_s);
    std::printf("| submit latency p50 / p99 (POST -> 202) | %.1f / %.1f ms | %.1f / %.1f ms |\n",
                percentile(f.run.submit_ms, 50), percentile(f.run.submit_ms, 99),
                percentile(s.run.submit_ms, 50), percentile(s.run.submit_ms, 99));
    std::printf("| queue wait p50 / p99 (created -> started) | %.0f / %.0f ms | %.0f / %.0f ms |\n",
                percentile(f.run.queue_wait_ms, 50), percentile(f.run.queue_wait_ms, 99),
                percentile(s.run.queue_wait_ms, 50), percentile(s.run.queue_wait_ms, 99));
    std::printf("| end-to-end p50 / p99 (POST -> done event) | %.0f / %.0f ms | %.0f / %.0f ms |\n",
                percentile(f.run.end_to_end_ms, 50), percentile(f.run.end_to_end_ms, 99),
                percentile(s.run.end_to_end_ms, 50), percentile(s.run.end_to_end_ms, 99));
    std::printf("| time per image on a device, mean (started -> finished) | %.1f ms | %.1f ms |\n",
                mean(f.run.device_ms), mean(s.run.device_ms));
    std::printf("| claim statement, mean | %.2f ms (%d claims) | (in memory) |\n",
                f.claim_count ? 1000 * f.claim_sum / f.claim_count : 0.0,
                static_cast<int>(f.claim_count));
    std::printf("| result write statement, mean | %.2f ms (%d writes) | |\n",
                f.write_count ? 1000 * f.write_sum / f.write_count : 0.0,
                static_cast<int>(f.write_count));
    const double done = static_cast<double>(f.run.end_to_end_ms.size());
    std::printf(
        "| database time per image (claims + writes, off the device threads) | %.2f ms | |\n",
        done ? 1000 * (f.claim_sum + f.write_sum) / done : 0.0);
    std::printf("| wall time | %.2f s | %.2f s |\n", f.run.wall_s, s.run.wall_s);
  }
  remove_tree(base);
  return failures == 0 ? 0 : 1;
}
