// The systemd notification protocol (sd_notify(3)): READY=1, WATCHDOG=1, STOPPING=1, STATUS=.
// Uses libsystemd when the build found it (DIFFUSIOND_HAVE_SYSTEMD), else speaks the protocol
// itself (one datagram to $NOTIFY_SOCKET). Without $NOTIFY_SOCKET everything is a no-op.
// Thread-safety: any thread.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace diffusiond {

// Sends newline-separated KEY=VALUE assignments; false when not under systemd or on error.
bool notify_systemd(const std::string& state);

// The watchdog interval systemd expects pings within ($WATCHDOG_USEC, for this process per
// $WATCHDOG_PID); nullopt when no watchdog is configured.
std::optional<std::chrono::microseconds> systemd_watchdog_interval();

}  // namespace diffusiond
