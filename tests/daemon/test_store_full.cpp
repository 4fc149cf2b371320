// The job store and its writer on a real full disk (a small tmpfs; needs the right to mount,
// else the process exits 77 and ctest shows the test as skipped): SQLite's SQLITE_FULL is a
// storage-full StoreError, the writer rejects inserts, keeps updates and commits them once space
// is freed, and nothing becomes final.
#include <catch2/catch.hpp>
#include <mutex>

#include "daemon/job_store.h"
#include "daemon/store_writer.h"
#include "temp_dir.h"
#include "tests/support/tmpfs_mount.h"

using namespace diffusiond;
using diffusiond::test::TempDir;
using diffusiond::testing::fill_disk;
using diffusiond::testing::TmpfsMount;

namespace {
JobRecord sample_job(const std::string& prompt, int n) {
  JobRequest r;
  r.prompts = {prompt + std::string(2000, 'x')};  // a few KB per row: the WAL must grow
  r.n = n;
  r.steps = 5;
  r.seed = 42;
  r.width = 64;
  r.height = 64;
  r.scheduler = "euler_a";
  return make_job(r, make_job_id(), unix_ms_now(), "tiny-sd1");
}

struct Listener : StoreWriter::Listener {
  std::mutex mu;
  int stalled = 0;
  int failed = 0;
  void writes_committed(StoreWriter::Ticket) override {}
  void writes_failed(const std::vector<std::string>&, const std::string&) override {
    std::lock_guard lock(mu);
    ++failed;
  }
  void writes_stalled(const std::string&) override {
    std::lock_guard lock(mu);
    ++stalled;
  }
};
}  // namespace

TEST_CASE("on a full disk the writer rejects inserts, retries updates, and resumes", "[store]") {
  TempDir root;
  TmpfsMount disk(root.path() / "data", "2m");
  auto store = JobStore::open(disk.path);
  Listener listener;
  StoreWriter writer(*store, listener, std::chrono::milliseconds(20));
  JobRecord accepted = sample_job("accepted", 4);
  accepted.seq = 1;
  REQUIRE(writer.wait(writer.enqueue({accepted, {}, true})).empty());

  fill_disk(disk.path / "filler");
  // Inserts and updates until SQLite hits the wall (the WAL may have room for a few first).
  bool full = false;
  std::string error;
  std::vector<JobRecord> updates;
  for (int i = 0; i < 200 && !full; ++i) {
    JobRecord job = sample_job("job " + std::to_string(i), 16);
    job.seq = i + 2;
    error = writer.wait(writer.enqueue({job, {}, true}), &full);
    if (!full) REQUIRE(error.empty());
  }
  REQUIRE(full);
  CHECK_THAT(error, Catch::Contains("full"));
  CHECK_FALSE(writer.failed());  // not final

  // An update of the accepted job is kept and retried, not failed.
  set_image_status(accepted, 0, ImageStatus::running);
  const auto update = writer.enqueue({accepted, {0}, false});
  for (int i = 0; i < 500; ++i) {
    {
      std::lock_guard lock(listener.mu);
      if (listener.stalled > 0) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    std::lock_guard lock(listener.mu);
    CHECK(listener.stalled > 0);
    CHECK(listener.failed == 0);
  }
  REQUIRE(std::filesystem::remove(disk.path / "filler"));
  CHECK(writer.wait(update).empty());  // committed once space is back
  CHECK_FALSE(writer.failed());
  const auto stored = store->load(accepted.view.id);
  REQUIRE(stored);
  CHECK(stored->view.images[0].status == ImageStatus::running);
  JobRecord later = sample_job("later", 1);
  later.seq = 1000;
  CHECK(writer.wait(writer.enqueue({later, {}, true})).empty());
}
