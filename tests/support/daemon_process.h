// Starts the real `diffusiond serve` (path in $DIFFUSIOND_BIN) on a free loopback port and stops
// it. The daemon's stdout/stderr go to <data dir>/daemon.log (shown when a start fails).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace diffusiond::testing {

std::filesystem::path daemon_binary();  // $DIFFUSIOND_BIN; throws if unset
std::filesystem::path tiny_model();     // tests/fixtures/tiny-sd1

class DaemonProcess {
 public:
  // Runs `diffusiond serve --listen 127.0.0.1:0 --data-dir DATA --model MODEL <extra>` and
  // waits until it prints its URL and /readyz answers 200.
  // log_file: where stdout/stderr go ("" = <data dir>/daemon.log).
  DaemonProcess(const std::filesystem::path& data_dir, const std::vector<std::string>& extra_args,
                const std::filesystem::path& model = tiny_model(),
                const std::filesystem::path& log_file = {});
  ~DaemonProcess();  // SIGTERM, then SIGKILL if it does not exit
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  std::uint16_t port() const { return port_; }
  void kill_hard();          // SIGKILL, and reap
  int terminate_and_wait();  // SIGTERM; returns the exit status
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }  // e.g. to read /proc/<pid>/status
  std::string log() const;

 private:
  std::filesystem::path data_dir_;
  std::filesystem::path log_file_;
  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
};

}  // namespace diffusiond::testing
