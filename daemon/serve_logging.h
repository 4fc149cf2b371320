// Logging of `diffusiond serve`: spdlog to stderr, one line per event. On a terminal: local
// time, colored level. Under systemd ($JOURNAL_STREAM set): no colors, no timestamp (journald
// adds one) and a "<N>" syslog priority prefix so `journalctl -p` filters work. Otherwise
// (pipes, files): timestamps, no colors.
// Thread-safety: call once from the control thread before other threads log.
#pragma once

#include <string>

namespace diffusiond {

void setup_serve_logging(const std::string& level);

}  // namespace diffusiond
