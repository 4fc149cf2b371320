// Small helpers shared by the black-box test files.
#pragma once

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "pipeline/media/posix_fs.h"
#include "tests/support/daemon_process.h"
#include "tests/support/http_client.h"

namespace diffusiond::testing {

inline std::filesystem::path fresh_dir(const std::string& name) {
  std::string tmpl =
      (std::filesystem::temp_directory_path() / ("diffusiond-bb-" + name + "-XXXXXX")).string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

// Removes the directory when the test ends (kept if the test fails, for the daemon.log).
struct TempDir {
  explicit TempDir(const std::string& name) : path(fresh_dir(name)) {}
  ~TempDir() {
    if (!keep) {
      std::error_code ec;
      remove_tree(path, ec);
    }
  }
  std::filesystem::path path;
  bool keep = false;
};

inline nlohmann::json get_json(std::uint16_t port, const std::string& target) {
  HttpReply r = http_request(port, "GET", target);
  if (r.status != 200)
    throw std::runtime_error("GET " + target + " -> " + std::to_string(r.status) + ": " + r.body);
  return r.json();
}

inline std::string submit(std::uint16_t port, const std::string& body) {
  HttpReply r = http_request(port, "POST", "/generate", body);
  if (r.status != 202)
    throw std::runtime_error("POST /generate -> " + std::to_string(r.status) + ": " + r.body);
  return r.json()["id"];
}

// Polls GET /jobs/{id} until the job is done, failed or cancelled (a deadline only guards
// against a hang; it is not a performance assertion).
inline nlohmann::json wait_finished(std::uint16_t port, const std::string& id,
                                    std::chrono::seconds deadline = std::chrono::seconds(300)) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    nlohmann::json j = get_json(port, "/jobs/" + id);
    const std::string s = j["status"];
    if (s == "done" || s == "failed" || s == "cancelled") return j;
    if (std::chrono::steady_clock::now() > until) {
      throw std::runtime_error("job " + id + " still " + s + " after the deadline");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace diffusiond::testing
