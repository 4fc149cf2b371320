// Black-box: the job store behind the real `diffusiond serve`. Durability of concurrent submits
// across kill -9 (group commit), a store that fails while jobs run, and the one JSON shape of a
// normalised request in the API, the store, the PNG and `diffusiond generate`.
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <mutex>
#include <set>

#include "blackbox_util.h"
#include "png_check.h"

using namespace diffusiond::testing;
using nlohmann::json;

namespace {

// The first column of the first row of `sql` (with `id` bound to its one ?, when given), read
// with SQLite itself, read-only: what the database file holds, not what the daemon says.
std::string query_store(const std::filesystem::path& db_path, const char* sql,
                        const std::string& id = {}) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_busy_timeout(db, 2000);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK);
  if (!id.empty()) sqlite3_bind_text(stmt, 1, id.c_str(), -1, SQLITE_TRANSIENT);
  std::string value;
  if (sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_text(stmt, 0))
    value = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return value;
}

json stored_request(const std::filesystem::path& db_path, const std::string& id) {
  const std::string text = query_store(db_path, "SELECT request FROM jobs WHERE id=?", id);
  REQUIRE_FALSE(text.empty());
  return json::parse(text);
}

std::int64_t stored_job_count(const std::filesystem::path& db_path) {
  return std::stoll(query_store(db_path, "SELECT COUNT(DISTINCT id) FROM jobs"));
}

int stored_attempts(const std::filesystem::path& db_path, const std::string& id) {
  const std::string text =
      query_store(db_path, "SELECT attempts FROM images WHERE job_id=? AND idx=0", id);
  return text.empty() ? -1 : std::stoi(text);
}

json png_metadata(const std::string& png) {
  const PngChunks chunks = read_png_chunks(png);
  REQUIRE(chunks.text.count("diffusiond") == 1);
  return json::parse(chunks.text.at("diffusiond"));
}

// Every job the daemon lists (newest first), by id.
std::vector<std::string> listed_ids(std::uint16_t port) {
  std::vector<std::string> ids;
  const json listing = get_json(port, "/jobs?limit=500");
  INFO(listing.dump().substr(0, 500));
  for (const auto& j : listing["jobs"]) ids.push_back(j["id"]);
  return ids;
}

}  // namespace

TEST_CASE("200 jobs from 8 clients are all durable after a kill -9 right after the last 202",
          "[blackbox][store]") {
  TempDir dir("durable");
  std::vector<std::string> accepted;
  {
    DaemonProcess d(dir.path, {"--devices", "cpu*2", "--max-queue", "1000"});
    std::mutex mu;
    std::atomic<int> failures{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 8; ++c) {
      clients.emplace_back([&, c] {
        for (int i = 0; i < 25; ++i) {
          const std::string body = R"({"prompt":"client )" + std::to_string(c) + " job " +
                                   std::to_string(i) +
                                   R"(","steps":1,"width":64,"height":64,"seed":7})";
          try {
            const std::string id = submit(d.port(), body);
            std::lock_guard lock(mu);
            accepted.push_back(id);
          } catch (const std::exception&) {
            ++failures;
          }
        }
      });
    }
    for (auto& t : clients) t.join();
    d.kill_hard();  // at once: no drain, no chance to write anything more
    REQUIRE(failures == 0);
  }
  REQUIRE(accepted.size() == 200);
  REQUIRE(std::set<std::string>(accepted.begin(), accepted.end()).size() == 200);
  // The database file itself holds every accepted job, read by SQLite alone.
  CHECK(stored_job_count(dir.path / "diffusiond.db") == 200);

  DaemonProcess d(dir.path, {"--devices", "cpu*2"});
  const std::vector<std::string> listed = listed_ids(d.port());
  const std::set<std::string> unique(listed.begin(), listed.end());
  CHECK(listed.size() == 200);  // none lost, none duplicated, nothing else
  CHECK(unique.size() == 200);
  for (const auto& id : accepted) {
    INFO("job " << id);
    CHECK(unique.count(id) == 1);
  }
  // They all run to the end after the restart.
  for (const auto& id : accepted) {
    INFO("job " << id);
    CHECK(wait_finished(d.port(), id)["status"] == "done");
  }
}

TEST_CASE(
    "a store that fails mid-run fails the unfinished jobs and /readyz while the daemon answers",
    "[blackbox][store]") {
  const bool removed = GENERATE(false, true);
  INFO((removed ? "the database file is removed" : "the database file is made read-only"));
  TempDir dir(removed ? "store-removed" : "store-readonly");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i)
    ids.push_back(submit(d.port(), R"({"prompt":"doomed )" + std::to_string(i) +
                                       R"(","n":2,"steps":40,"width":64,"height":64})"));
  for (int i = 0; i < 600 && get_json(d.port(), "/jobs/" + ids[0])["status"] != "running"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(get_json(d.port(), "/jobs/" + ids[0])["status"] == "running");

  const auto db = dir.path / "diffusiond.db";
  if (removed)
    REQUIRE(::unlink(db.c_str()) == 0);
  else
    REQUIRE(::chmod(db.c_str(), 0444) == 0);

  // The next write (an image's end or start) fails: every unfinished job fails with the error;
  // job 0 cannot have finished (its second image was still queued).
  for (const auto& id : ids) {
    INFO("job " << id);
    const json j = wait_finished(d.port(), id);
    CHECK(j["status"] == "failed");
    CHECK_THAT(j["error"].get<std::string>(), Catch::Contains("job store"));
  }
  HttpReply ready = http_request(d.port(), "GET", "/readyz");
  CHECK(ready.status == 503);
  CHECK(http_request(d.port(), "GET", "/healthz").status == 200);
  HttpReply refused = http_request(d.port(), "POST", "/generate", R"({"prompt":"after"})");
  CHECK(refused.status == 503);
  CHECK(refused.json()["error"]["code"] == "store_error");
  CHECK(http_request(d.port(), "GET", "/jobs/" + ids[2]).status == 200);
  CHECK(http_request(d.port(), "GET", "/jobs").status == 200);
  CHECK(http_request(d.port(), "GET", "/metrics").status == 200);
  if (!removed) ::chmod(db.c_str(), 0644);  // so that the temp dir can be cleaned
}

TEST_CASE("one normalised request: the same JSON in the job, the store, the PNG and the CLI's PNG",
          "[blackbox][store]") {
  TempDir dir("one-json");
  json api_request;
  std::string id;
  std::string png;
  {
    DaemonProcess d(dir.path, {"--devices", "cpu"});
    // Defaults (size, scheduler) come from the model; the alias is made canonical.
    id = submit(d.port(), R"({"prompt":"a lighthouse","negative_prompt":"fog","steps":3,
                             "seed":99,"scheduler":"Euler a"})");
    const json job = wait_finished(d.port(), id);
    REQUIRE(job["status"] == "done");
    api_request = job["request"];
    HttpReply r = http_request(d.port(), "GET", job["images"][0]["url"].get<std::string>());
    REQUIRE(r.status == 200);
    png = r.body;
    d.terminate_and_wait();  // the store is complete once the daemon has stopped
  }
  CHECK(api_request["scheduler"] == "euler_a");
  CHECK(api_request["width"] == 64);  // the tiny model's default

  const json store_request = stored_request(dir.path / "diffusiond.db", id);
  json png_request = png_metadata(png)["request"];
  CHECK(png_request["job_id"] == id);
  png_request.erase("job_id");
  CHECK(store_request == api_request);
  CHECK(png_request == api_request);

  // `diffusiond generate` with the same request writes the same request JSON into its PNG.
  const auto out = dir.path / "cli.png";
  const std::string command = daemon_binary().string() + " generate --model " +
                              tiny_model().string() +
                              " --prompt 'a lighthouse' --negative-prompt fog --steps 3 "
                              "--seed 99 --scheduler 'Euler a' -o " +
                              out.string() + " > " + (dir.path / "cli.log").string() + " 2>&1";
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  const json cli_request = png_metadata(read_file(out.string()))["request"];
  CHECK(cli_request == api_request);
}

TEST_CASE("an image running at every kill -9 fails with attempts_exhausted, no crash loop",
          "[blackbox][store]") {
  TempDir dir("crash-loop");
  std::string id;
  // Kills the daemon while the image runs, once its start (attempt `n`) is committed: the
  // attempt count is written when an image starts, without the device waiting for it.
  auto kill_while_running = [&](DaemonProcess& d, int n) {
    for (int i = 0; i < 1000 && stored_attempts(dir.path / "diffusiond.db", id) < n; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(stored_attempts(dir.path / "diffusiond.db", id) == n);
    REQUIRE(get_json(d.port(), "/jobs/" + id)["images"][0]["status"] == "running");
    d.kill_hard();
  };
  {
    DaemonProcess d(dir.path, {"--devices", "cpu"});
    id = submit(d.port(), R"({"prompt":"poison","steps":150,"width":64,"height":64})");
    kill_while_running(d, 1);
  }
  {
    DaemonProcess d(dir.path, {"--devices", "cpu"});  // after the first crash it runs again
    kill_while_running(d, 2);
  }
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  const json j = wait_finished(d.port(), id);
  CHECK(j["status"] == "failed");
  CHECK_THAT(j["images"][0]["error"].get<std::string>(), Catch::StartsWith("attempts_exhausted"));
  CHECK(get_json(d.port(), "/readyz")["status"] == "ready");
}

TEST_CASE("the store and the PNGs are the daemon user's alone, whatever the umask",
          "[blackbox][store]") {
  TempDir dir("modes");
  const mode_t previous = ::umask(022);  // a typical login shell's: files 0644
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  ::umask(previous);
  const std::string id = submit(d.port(), R"({"prompt":"private","steps":1})");
  REQUIRE(wait_finished(d.port(), id)["status"] == "done");
  int checked = 0;
  std::error_code ec;
  for (const auto& path : diffusiond::list_files_recursive(dir.path, ec)) {
    if (path.filename() == "daemon.log") continue;  // written by this test, not the daemon
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    INFO(path << " mode " << std::oct << (st.st_mode & 0777));
    CHECK((st.st_mode & 0077) == 0);
    ++checked;
  }
  struct stat images {};
  REQUIRE(::stat((dir.path / "images" / id).c_str(), &images) == 0);
  CHECK((images.st_mode & 0077) == 0);
  CHECK(checked >= 2);  // the database and the PNG at least
}

namespace {

DecodedImage image_of(std::uint16_t port, const json& job) {
  HttpReply r = http_request(port, "GET", job["images"][0]["url"].get<std::string>());
  REQUIRE(r.status == 200);
  return decode_png(r.body);
}

// A prompt of three 75-token chunks (86 tokens, then a BREAK; weights, a comma), its request.
const std::string kA1111Prompt = "a (lighthouse:1.4) on a [cliff], " + [] {
  std::string s;
  for (int i = 0; i < 40; ++i) s += "stormy sea ";
  return s;
}() + "BREAK (((night)))";

std::string a1111_body(const char* syntax, const char* negative = "fog") {
  json b = {{"prompt", kA1111Prompt}, {"negative_prompt", negative}, {"steps", 3}, {"seed", 7}};
  if (syntax) b["prompt_syntax"] = syntax;
  return b.dump();
}

}  // namespace

TEST_CASE(
    "prompt_syntax a1111 on the native API: runs, is stored, and a replay after kill -9 "
    "gives the same image",
    "[blackbox][store][a1111]") {
  TempDir dir("a1111");
  DecodedImage first;
  std::string replayed_id;
  {
    DaemonProcess d(dir.path, {"--devices", "cpu"});
    const std::string a = submit(d.port(), a1111_body("a1111"));
    const std::string p = submit(d.port(), a1111_body(nullptr));
    const json ja = wait_finished(d.port(), a), jp = wait_finished(d.port(), p);
    REQUIRE(ja["status"] == "done");
    REQUIRE(jp["status"] == "done");
    CHECK(ja["request"]["prompt_syntax"] == "a1111");
    CHECK_FALSE(jp["request"].contains("prompt_syntax"));  // plain, the default
    first = image_of(d.port(), ja);
    CHECK(max_abs_diff(first, image_of(d.port(), jp)) > 0);  // the syntax changes the image
    // The PNG: the parameters text shows the prompt as given, the request JSON its syntax.
    HttpReply png = http_request(d.port(), "GET", ja["images"][0]["url"].get<std::string>());
    const PngChunks chunks = read_png_chunks(png.body);
    REQUIRE(chunks.text.count("parameters") == 1);
    CHECK(chunks.text.at("parameters").rfind(kA1111Prompt + "\n", 0) == 0);
    CHECK(png_metadata(png.body)["request"]["prompt_syntax"] == "a1111");

    // A job queued behind a long one when the daemon is killed is run again after the restart
    // from what the store kept.
    const std::string blocker = submit(d.port(), R"({"prompt":"slow","steps":150,"n":2,"seed":1})");
    for (int i = 0; i < 600 && get_json(d.port(), "/jobs/" + blocker)["status"] != "running"; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    replayed_id = submit(d.port(), a1111_body("a1111"));
    CHECK(get_json(d.port(), "/jobs/" + replayed_id)["status"] == "queued");
    d.kill_hard();
  }
  CHECK(stored_request(dir.path / "diffusiond.db", replayed_id)["prompt_syntax"] == "a1111");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  const json again = wait_finished(d.port(), replayed_id);
  REQUIRE(again["status"] == "done");
  CHECK(max_abs_diff(image_of(d.port(), again), first) == 0);
}

TEST_CASE("serve --pad-cond-uncond: a long prompt with a short negative prompt, both modes",
          "[blackbox][a1111]") {
  TempDir dir("pad-cond");
  DecodedImage separate, padded;
  for (const bool pad : {false, true}) {
    std::vector<std::string> args = {"--devices", "cpu"};
    if (pad) args.push_back("--pad-cond-uncond");
    DaemonProcess d(dir.path / (pad ? "padded" : "separate"), args);
    const json j = wait_finished(d.port(), submit(d.port(), a1111_body("a1111")));
    REQUIRE(j["status"] == "done");
    (pad ? padded : separate) = image_of(d.port(), j);
  }
  // The negative prompt "fog" (1 chunk) padded with the empty prompt's chunks to the prompt's 3
  // is a different unconditional input than "fog" alone: a different image.
  CHECK(max_abs_diff(separate, padded) > 0);
}
