// StorageGuard: the reserve check (statvfs of a real folder), a reported failed write, the probe
// that clears the state, one callback per transition; and is_storage_full_error's classes.
#include <catch2/catch.hpp>
#include <cerrno>
#include <mutex>
#include <system_error>

#include "daemon/job_store.h"
#include "daemon/storage_guard.h"
#include "temp_dir.h"

using namespace diffusiond;
using diffusiond::test::TempDir;

namespace {
struct Transitions {
  std::mutex mu;
  std::vector<bool> seen;
  std::function<void(bool, const std::string&)> callback() {
    return [this](bool full, const std::string&) {
      std::lock_guard lock(mu);
      seen.push_back(full);
    };
  }
};
}  // namespace

TEST_CASE("storage errors are told apart: ENOSPC, EDQUOT and SQLITE_FULL only", "[storage]") {
  CHECK(is_storage_full_error(std::system_error(ENOSPC, std::generic_category(), "w")));
  CHECK(is_storage_full_error(std::system_error(EDQUOT, std::generic_category(), "w")));
  CHECK(is_storage_full_error(StoreError("full", true)));
  CHECK_FALSE(is_storage_full_error(std::system_error(EACCES, std::generic_category(), "w")));
  CHECK_FALSE(is_storage_full_error(std::system_error(EIO, std::generic_category(), "w")));
  CHECK_FALSE(is_storage_full_error(StoreError("the database file is gone")));
  CHECK_FALSE(is_storage_full_error(std::runtime_error("No space left on device")));
}

TEST_CASE("a reserve larger than the free space is full and a failed write is full until probed",
          "[storage]") {
  TempDir dir;
  SECTION("the reserve") {
    Transitions t;
    StorageGuard guard({dir.path(), ~std::uint64_t{0}, std::chrono::milliseconds(10)},
                       t.callback());
    CHECK_FALSE(guard.full());
    guard.check_now();
    CHECK(guard.full());
    CHECK_THAT(guard.reason(),
               Catch::Contains("free in " + dir.path().string()) && Catch::Contains("reserve"));
    guard.check_now();  // still full: no second callback
    CHECK(t.seen == std::vector<bool>{true});
  }
  SECTION("a reported failure, then a probe that succeeds") {
    Transitions t;
    StorageGuard guard({dir.path(), 0, std::chrono::milliseconds(10)}, t.callback());
    guard.check_now();
    CHECK_FALSE(guard.full());
    guard.report_full("cannot write x.png: No space left on device");
    guard.report_full("again");
    CHECK(guard.full());
    CHECK(guard.reason() == "again");
    guard.check_now();  // space is there and the probe file can be written: clear
    CHECK_FALSE(guard.full());
    CHECK(t.seen == std::vector<bool>{true, false});
    CHECK_FALSE(std::filesystem::exists(dir.path() / ".storage-probe"));
  }
  SECTION("a probe that cannot write keeps it full") {
    Transitions t;
    const auto gone = dir.path() / "not-there";
    StorageGuard guard({gone, 0, std::chrono::milliseconds(10)}, t.callback());
    guard.report_full("disk full");
    guard.check_now();  // statvfs fails: unknown, stays full
    CHECK(guard.full());
  }
  SECTION("the thread checks by itself") {
    Transitions t;
    StorageGuard guard({dir.path(), 0, std::chrono::milliseconds(10)}, t.callback());
    guard.report_full("disk full");
    guard.start();
    for (int i = 0; i < 500 && guard.full(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK_FALSE(guard.full());
    guard.stop();
  }
}
