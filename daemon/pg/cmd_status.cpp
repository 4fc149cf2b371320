// `diffusiond status --store URL`: the fleet sharing a PostgreSQL queue: its daemons (their
// devices and heartbeats) and the queue. Reads only.
#include <CLI/CLI.hpp>

#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "daemon/pg/cmd_status.h"
#include "daemon/pg/pg_store.h"

namespace diffusiond {

namespace {
std::string age(std::int64_t ms) {
  if (ms < 10000) return std::to_string(ms) + " ms ago";
  return std::to_string(ms / 1000) + " s ago";
}

void print_status(const std::string& url) {
  PgConnection db(url);
  const auto daemons = pg::daemons(db);
  const auto queue = pg::queue_counts(db);
  const auto jobs = pg::count_by_status(db);
  std::cout << "store: " << redact_url(url) << "\n";
  std::cout << "queue: " << queue.queued << " image(s) queued, " << queue.running
            << " running; jobs:";
  for (const auto& [status, count] : jobs) std::cout << " " << to_string(status) << "=" << count;
  std::cout << "\n" << daemons.size() << " daemon(s):\n";
  for (const auto& d : daemons) {
    std::cout << "  " << d.id << "  " << (d.url.empty() ? "(no url)" : d.url) << "  host " << d.host
              << "  heartbeat " << age(d.heartbeat_age_ms) << "  holds " << d.running
              << " image(s)\n";
    try {
      for (const auto& dev : nlohmann::json::parse(d.devices_json))
        std::cout << "      " << dev.value("name", "?") << "  " << dev.value("health", "?")
                  << (dev.value("busy", false) ? "  busy" : "  idle")
                  << (dev.value("loaded", false) ? "" : "  (not loaded)") << "  "
                  << dev.value("images_done", 0) << " image(s) done\n";
    } catch (const std::exception&) {
      std::cout << "      (unreadable device list)\n";
    }
  }
}
}  // namespace

void add_status_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "status", "Print the fleet that shares a PostgreSQL job queue: daemons, devices, queue");
  auto store = std::make_shared<std::string>();
  auto store_file = std::make_shared<std::string>();
  cmd->add_option("--store", *store, "The PostgreSQL URL (postgresql://...)");
  cmd->add_option("--store-file", *store_file, "A file holding the URL (e.g. a credential)");
  cmd->callback([store, store_file] {
    const std::string url = resolve_store_url(*store, *store_file);
    if (url.empty())
      throw std::invalid_argument("status needs --store postgresql://... or --store-file");
    print_status(url);
  });
}

}  // namespace diffusiond
