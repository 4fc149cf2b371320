// Black-box: the real `diffusiond serve` on a data dir that fills up: a real size-limited tmpfs,
// mounted for the test (needs the right to mount, e.g. root; the test is skipped with a message
// and exit code 77 where the machine does not allow it). The disk is filled with a file while
// jobs run, then the file is removed: new jobs are refused with 507 storage_full and /readyz is
// not ready while it lasts, nothing accepted is lost or failed, and everything resumes after.
#include <unistd.h>

#include <catch2/catch.hpp>

#include "blackbox_util.h"
#include "png_check.h"
#include "tests/support/tmpfs_mount.h"

using namespace diffusiond::testing;
using nlohmann::json;

namespace {

json readyz(std::uint16_t port, unsigned* status) {
  HttpReply r = http_request(port, "GET", "/readyz");
  *status = r.status;
  return r.json();
}

// Polls /readyz until it answers `want` (a deadline only guards against a hang).
json wait_readyz(std::uint16_t port, unsigned want) {
  unsigned status = 0;
  json body;
  for (int i = 0; i < 600; ++i) {
    body = readyz(port, &status);
    if (status == want) return body;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FAIL("/readyz never answered " << want << "; last: " << status << " " << body.dump());
  return body;
}

bool no_image_failed(const json& job) {
  for (const auto& image : job["images"])
    if (image["status"] == "failed") return false;
  return true;
}

void check_all_done(std::uint16_t port, const std::string& id) {
  INFO("job " << id);
  const json j = wait_finished(port, id);
  REQUIRE(j["status"] == "done");
  for (const auto& image : j["images"]) {
    HttpReply png = http_request(port, "GET", image["url"].get<std::string>());
    REQUIRE(png.status == 200);
    CHECK(decode_png(png.body).width == 64);
  }
}

}  // namespace

TEST_CASE("a full data dir refuses new jobs with 507 and is not ready until space is freed",
          "[blackbox][disk]") {
  // reserve: the free-space check stops work before a write fails; 0: only failed writes (a
  // PNG's ENOSPC or SQLite's SQLITE_FULL) say the disk is full.
  const std::string reserve_mb = GENERATE("1", "0");
  INFO("--min-free-mb " << reserve_mb);
  TempDir root("disk-full");
  root.keep = true;  // the daemon.log stays for a failed run
  TmpfsMount disk(root.path / "data", "6m");
  DaemonProcess d(disk.path, {"--devices", "cpu", "--min-free-mb", reserve_mb}, tiny_model(),
                  root.path / "daemon.log");
  INFO("daemon log: " << (root.path / "daemon.log"));

  const std::string before = submit(
      d.port(),
      R"({"prompt":"accepted before the disk fills","n":12,"steps":30,"width":64,"height":64})");
  const std::size_t filled = fill_disk(disk.path / "filler");
  INFO("filled " << filled << " bytes");

  // With a reserve the guard notices within a second; without one the next write that fails
  // does (the job above still has PNGs to write; a new submit may also hit SQLITE_FULL).
  HttpReply after = http_request(
      d.port(), "POST", "/generate",
      R"({"prompt":"submitted on a full disk","n":2,"steps":4,"width":64,"height":64})");
  std::string accepted_on_full;
  if (after.status == 202) accepted_on_full = after.json()["id"];
  const json not_ready = wait_readyz(d.port(), 503);
  CHECK(not_ready["error"]["reason"] == "storage_full");

  HttpReply refused = http_request(d.port(), "POST", "/generate", R"({"prompt":"refused"})");
  CHECK(refused.status == 507);
  CHECK(refused.json()["error"]["code"] == "storage_full");
  CHECK_FALSE(refused.header("retry-after").empty());
  CHECK_THAT(http_request(d.port(), "GET", "/metrics").body,
             Catch::Contains("diffusiond_storage_full 1"));
  // Reads keep working, and nothing accepted has failed.
  const json waiting = get_json(d.port(), "/jobs/" + before);
  CHECK(waiting["status"] != "failed");
  CHECK(no_image_failed(waiting));
  CHECK(http_request(d.port(), "GET", "/healthz").status == 200);

  REQUIRE(::unlink((disk.path / "filler").c_str()) == 0);
  wait_readyz(d.port(), 200);
  check_all_done(d.port(), before);
  if (!accepted_on_full.empty()) check_all_done(d.port(), accepted_on_full);
  const std::string later = submit(
      d.port(), R"({"prompt":"after the space is back","n":2,"steps":4,"width":64,"height":64})");
  check_all_done(d.port(), later);
  CHECK_THAT(http_request(d.port(), "GET", "/metrics").body,
             Catch::Contains("diffusiond_storage_full 0"));
  const json final_job = get_json(d.port(), "/jobs/" + before);
  for (const auto& image : final_job["images"]) CHECK(image["error"].is_null());
  root.keep = false;
}
