// Black-box tests of a fleet: a real PostgreSQL (initdb + pg_ctl in a temporary folder on a free
// loopback port, tests/support/pg_server.h) and 2-3 real daemons on loopback with one `cpu`
// device each, sharing its queue (--store postgresql://...). Skipped (exit code 77, with a
// message) only when PostgreSQL is not installed.
//  - jobs submitted to one daemon run on all of them; each image equals its `diffusiond
//    generate` twin; any daemon serves any job, PNG and ?wait=1; three daemons starting at
//    once create the schema once; `diffusiond status` lists the fleet;
//  - kill -9 of a daemon running images: another finishes them once the lease expired;
//  - a daemon frozen (SIGSTOP) past its lease: its images are taken over, and once it thaws its
//    results are refused (each image is done exactly once);
//  - the database stopped mid-run: /readyz 503 store_unreachable, submits 503; once it is back
//    the daemons reconnect and every job finishes.
#include <signal.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <thread>

#include "tests/blackbox/blackbox_util.h"
#include "tests/blackbox/png_check.h"
#include "tests/support/pg_server.h"

using namespace diffusiond::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr int kSkip = 77;

void require_postgres() {
  if (PgServer::find_binaries()) return;
  std::cout << "PostgreSQL is not installed (no initdb/pg_ctl in $DIFFUSIOND_PG_BIN, "
               "/usr/lib/postgresql/*/bin or PATH; Debian: apt-get install postgresql): the "
               "fleet tests are skipped (exit code "
            << kSkip << ")" << std::endl;
  std::fflush(nullptr);
  std::_Exit(kSkip);
}

// Daemons started at the same time (their schema creation races), one `cpu` device each.
std::vector<std::unique_ptr<DaemonProcess>> start_fleet(
    const fs::path& dir, const PgServer& pg, int count, const std::string& lease = "1.5",
    const std::vector<std::string>& extra = {}) {
  std::vector<std::unique_ptr<DaemonProcess>> daemons(static_cast<std::size_t>(count));
  std::vector<std::string> errors(static_cast<std::size_t>(count));
  std::vector<std::thread> threads;
  for (int i = 0; i < count; ++i)
    threads.emplace_back([&, i] {
      try {
        daemons[static_cast<std::size_t>(i)] =
            std::make_unique<DaemonProcess>(dir / ("d" + std::to_string(i)), [&] {
              std::vector<std::string> args{"--devices", "cpu",    "--threads",       "1",
                                            "--store",   pg.url(), "--lease-seconds", lease};
              args.insert(args.end(), extra.begin(), extra.end());
              return args;
            }());
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(i)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) {
    INFO(e);
    REQUIRE(e.empty());
  }
  return daemons;
}

// Which daemon an image ran on: its `device` is "<host>-<pid>-<random>/cpu".
pid_t runner_pid(const json& image) {
  if (!image["device"].is_string()) return -1;
  static const std::regex pattern(R"(^.*-(\d+)-[0-9a-f]{8}/cpu$)");
  std::smatch m;
  const std::string device = image["device"];
  if (!std::regex_match(device, m, pattern)) return -1;
  return static_cast<pid_t>(std::stol(m[1]));
}

DecodedImage generate_twin(const fs::path& dir, const std::string& prompt, std::uint64_t seed,
                           int steps) {
  const fs::path out = dir / ("twin-" + std::to_string(seed) + ".png");
  const std::string cmd = "'" + daemon_binary().string() + "' generate --model '" +
                          tiny_model().string() + "' --prompt '" + prompt + "' --seed " +
                          std::to_string(seed) + " --steps " + std::to_string(steps) + " -o '" +
                          out.string() + "' > '" + out.string() + ".log' 2>&1";
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  return decode_png(read_file(out.string()));
}

std::string png_of(std::uint16_t port, const std::string& id, int k) {
  HttpReply r = http_request(port, "GET", "/jobs/" + id + "/images/" + std::to_string(k) + ".png");
  INFO("GET image " << k << " of " << id << ": " << r.status << " " << r.body.substr(0, 200));
  REQUIRE(r.status == 200);
  return r.body;
}

// Waits until some image of the job runs on the daemon with this pid (a guard, not a timing).
int wait_running_on(std::uint16_t port, const std::string& id, pid_t pid) {
  for (int i = 0; i < 3000; ++i) {
    const json job = get_json(port, "/jobs/" + id);
    for (const auto& image : job["images"])
      if (image["status"] == "running" && runner_pid(image) == pid) return image["index"];
    if (job["status"] != "queued" && job["status"] != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL("no image of " << id << " ran on daemon " << pid);
  return -1;
}

// How many times the logs say image k of the job was stored as done.
int done_count(const std::vector<std::string>& logs, const std::string& id, int k) {
  const std::string line = "job " + id + " image " + std::to_string(k) + " done on ";
  int n = 0;
  for (const auto& log : logs)
    for (std::size_t at = log.find(line); at != std::string::npos; at = log.find(line, at + 1)) ++n;
  return n;
}

std::string run_status(const std::string& url) {
  const std::string cmd = "'" + daemon_binary().string() + "' status --store '" + url + "' 2>&1";
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    ::pclose(p);
  }
  return out;
}

}  // namespace

TEST_CASE("a fleet of three daemons on one PostgreSQL: jobs from one run on all, twins match",
          "[blackbox][postgres]") {
  require_postgres();
  TempDir dir("pg-fleet");
  PgServer pg;
  auto fleet = start_fleet(dir.path, pg, 3);
  const auto a = fleet[0]->port(), b = fleet[1]->port(), c = fleet[2]->port();

  // Three jobs of three images, all submitted to daemon A.
  std::vector<std::string> ids;
  for (int j = 0; j < 3; ++j)
    ids.push_back(submit(a, R"({"prompt":"a fleet","n":3,"steps":6,"seed":)" +
                                std::to_string(1000 * (j + 1)) + "}"));
  // The events of A's last job, streamed by daemon C (polled from the store there).
  RawConnection events(c, 120);
  events.send("GET /jobs/" + ids[2] +
              "/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
  // ?wait=1 on daemon C answers once a job of A's finished, wherever it ran.
  HttpReply waited = http_request(c, "POST", "/generate?wait=1",
                                  R"({"prompt":"a fleet","n":1,"steps":6,"seed":7})");
  REQUIRE(waited.status == 200);
  CHECK(waited.json()["status"] == "done");
  std::map<pid_t, std::tuple<std::string, int, std::uint64_t>> one_per_daemon;
  for (const auto& id : ids) {
    const json job = wait_finished(b, id);  // polled on B
    REQUIRE(job["status"] == "done");
    for (const auto& image : job["images"]) {
      const pid_t pid = runner_pid(image);
      INFO(image.dump());
      CHECK((pid == fleet[0]->pid() || pid == fleet[1]->pid() || pid == fleet[2]->pid()));
      CHECK(image["batch_size"] == 1);  // the CPU's default --max-batch
      one_per_daemon.emplace(
          pid, std::tuple{id, image["index"].get<int>(), image["seed"].get<std::uint64_t>()});
      // The same PNG from every daemon, whichever made it.
      const std::string png = png_of(a, id, image["index"]);
      CHECK(png_of(b, id, image["index"]) == png);
      CHECK(png_of(c, id, image["index"]) == png);
    }
  }
  CHECK(one_per_daemon.size() == 3);  // every daemon ran some of A's images
  {
    const std::string raw = events.read_to_close();  // the stream ends after the job's end
    const auto messages = parse_event_stream(raw.substr(raw.find("\r\n\r\n") + 4));
    std::set<int> images_done;
    for (const auto& m : messages)
      if (m.event == "image") images_done.insert(json::parse(m.data)["image"].get<int>());
    INFO(raw);
    REQUIRE(!messages.empty());
    CHECK(images_done == std::set<int>{0, 1, 2});
    CHECK(messages.back().event == "done");
  }
  for (const auto& [pid, which] : one_per_daemon) {
    const auto& [id, k, seed] = which;
    INFO("image " << k << " of " << id << " made by daemon " << pid);
    CHECK(max_abs_diff(decode_png(png_of(c, id, k)), generate_twin(dir.path, "a fleet", seed, 6)) ==
          0);
  }
  // Every daemon lists every job.
  CHECK(get_json(c, "/jobs?limit=10")["jobs"].size() == 4);

  const std::string status = run_status(pg.url());
  INFO(status);
  CHECK(status.find("3 daemon(s)") != std::string::npos);
  CHECK(status.find("jobs: done=4") != std::string::npos);
  for (const auto& d : fleet)
    CHECK(status.find("http://127.0.0.1:" + std::to_string(d->port())) != std::string::npos);
  const std::string metrics = http_request(b, "GET", "/metrics").body;
  CHECK(metrics.find("diffusiond_queue_depth 0") != std::string::npos);
  CHECK(metrics.find("diffusiond_store_reachable 1") != std::string::npos);
  CHECK(get_json(b, "/devices")["devices"].size() == 1);  // its own devices
}

TEST_CASE("a fleet daemon with --max-batch 3 claims a job's three images as one batch",
          "[blackbox][postgres]") {
  require_postgres();
  TempDir dir("pg-batch");
  PgServer pg;
  // The submit inserts the three images in one transaction and one claim takes them (3 free
  // slots: --max-batch 3 on one device); --batch-wait-ms lets the worker wait for the other two
  // while the claimer hands them over one by one.
  auto fleet = start_fleet(dir.path, pg, 1, "30", {"--max-batch", "3", "--batch-wait-ms", "2000"});
  const auto port = fleet[0]->port();
  const std::string id = submit(port, R"({"prompt":"a batch","n":3,"steps":4,"seed":500})");
  const json job = wait_finished(port, id);
  REQUIRE(job["status"] == "done");
  for (const auto& image : job["images"]) {
    INFO(image.dump());
    CHECK(image["batch_size"] == 3);
    CHECK(max_abs_diff(decode_png(png_of(port, id, image["index"])),
                       generate_twin(dir.path, "a batch", image["seed"], 4)) <= 1);
  }
}

TEST_CASE("kill -9 of a daemon running images: another finishes them after the lease",
          "[blackbox][postgres]") {
  require_postgres();
  TempDir dir("pg-kill");
  PgServer pg;
  auto fleet = start_fleet(dir.path, pg, 2);
  const auto survivor = fleet[1]->port();
  const std::string id = submit(survivor, R"({"prompt":"a crash","n":4,"steps":50,"seed":500})");
  const int k = wait_running_on(survivor, id, fleet[0]->pid());
  const std::string killed_log_before = fleet[0]->log();
  fleet[0]->kill_hard();
  const json job = wait_finished(survivor, id);
  INFO(fleet[1]->log());
  REQUIRE(job["status"] == "done");
  // The image the dead daemon ran was finished by the survivor; nothing lost, each once.
  CHECK(runner_pid(job["images"][k]) == fleet[1]->pid());
  CHECK(fleet[1]->log().find("lease expired; queued again") != std::string::npos);
  const std::vector<std::string> logs{fleet[0]->log(), fleet[1]->log()};
  for (int i = 0; i < 4; ++i) CHECK(done_count(logs, id, i) == 1);
  CHECK(max_abs_diff(decode_png(png_of(survivor, id, k)),
                     generate_twin(dir.path, "a crash", 500 + static_cast<std::uint64_t>(k), 50)) ==
        0);
}

TEST_CASE("a daemon frozen past its lease: its image is taken over, its late result refused",
          "[blackbox][postgres]") {
  require_postgres();
  TempDir dir("pg-freeze");
  PgServer pg;
  auto fleet = start_fleet(dir.path, pg, 2);
  const auto other = fleet[1]->port();
  const std::string id = submit(other, R"({"prompt":"a freeze","n":2,"steps":50,"seed":70})");
  const int k = wait_running_on(other, id, fleet[0]->pid());
  REQUIRE(::kill(fleet[0]->pid(), SIGSTOP) == 0);
  const json job = wait_finished(other, id);
  REQUIRE(job["status"] == "done");
  CHECK(runner_pid(job["images"][k]) == fleet[1]->pid());
  const std::string png = png_of(other, id, k);
  REQUIRE(::kill(fleet[0]->pid(), SIGCONT) == 0);
  // The thawed daemon finds out at its next heartbeat (or its refused write) and drops it.
  bool dropped = false;
  for (int i = 0; i < 600 && !dropped; ++i) {
    const std::string log = fleet[0]->log();
    dropped = log.find("lost its lease") != std::string::npos ||
              log.find("result dropped") != std::string::npos;
    if (!dropped) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  INFO(fleet[0]->log());
  CHECK(dropped);
  const std::vector<std::string> logs{fleet[0]->log(), fleet[1]->log()};
  for (int i = 0; i < 2; ++i) CHECK(done_count(logs, id, i) == 1);
  CHECK(png_of(fleet[0]->port(), id, k) == png);  // the survivor's image, from the thawed one
  CHECK(get_json(fleet[0]->port(), "/jobs/" + id)["status"] == "done");
}

TEST_CASE("the database stopped mid-run: not ready, then the daemons reconnect and finish",
          "[blackbox][postgres]") {
  require_postgres();
  TempDir dir("pg-restart");
  PgServer pg;
  auto fleet = start_fleet(dir.path, pg, 2, "3");
  const auto a = fleet[0]->port(), b = fleet[1]->port();
  const std::string id = submit(a, R"({"prompt":"a restart","n":4,"steps":50,"seed":40})");
  wait_running_on(a, id, fleet[0]->pid());
  pg.stop();
  bool unready = false;
  for (int i = 0; i < 600 && !unready; ++i) {
    HttpReply r = http_request(a, "GET", "/readyz");
    unready = r.status == 503 && r.body.find("store_unreachable") != std::string::npos;
    if (!unready) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(unready);
  HttpReply refused = http_request(b, "POST", "/generate", R"({"prompt":"while down"})");
  CHECK(refused.status == 503);
  CHECK(refused.body.find("store_unreachable") != std::string::npos);
  pg.start();
  for (auto port : {a, b}) {
    bool ready = false;
    for (int i = 0; i < 600 && !ready; ++i) {
      ready = http_request(port, "GET", "/readyz").status == 200;
      if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    CHECK(ready);
  }
  const json job = wait_finished(b, id);
  INFO(fleet[0]->log());
  INFO(fleet[1]->log());
  REQUIRE(job["status"] == "done");
  const std::vector<std::string> logs{fleet[0]->log(), fleet[1]->log()};
  for (int i = 0; i < 4; ++i) CHECK(done_count(logs, id, i) == 1);
  const std::string after = submit(b, R"({"prompt":"after the restart","steps":4})");
  CHECK(wait_finished(a, after)["status"] == "done");
}
