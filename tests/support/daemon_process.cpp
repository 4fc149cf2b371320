#include "tests/support/daemon_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tests/support/http_client.h"

extern char** environ;

namespace diffusiond::testing {

std::filesystem::path daemon_binary() {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  if (bin == nullptr || *bin == '\0') {
    throw std::runtime_error("DIFFUSIOND_BIN is not set (ctest sets it to the built diffusiond)");
  }
  return bin;
}

std::filesystem::path tiny_model() {
  return std::filesystem::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
}

DaemonProcess::DaemonProcess(const std::filesystem::path& data_dir,
                             const std::vector<std::string>& extra_args,
                             const std::filesystem::path& model,
                             const std::filesystem::path& log_file)
    : data_dir_(data_dir), log_file_(log_file.empty() ? data_dir / "daemon.log" : log_file) {
  std::filesystem::create_directories(data_dir_);
  const std::string bin = daemon_binary().string();
  std::vector<std::string> args = {bin,           "serve",       "--listen",
                                   "127.0.0.1:0", "--data-dir",  data_dir_.string(),
                                   "--model",     model.string()};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const std::string log_path = log_file_.string();
  // A restart appends to the same log: only what this process writes counts.
  const std::size_t log_start = log().size();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  const int rc = posix_spawn(&pid_, bin.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + bin + ": " + std::strerror(rc));

  // The daemon prints "listening on http://HOST:PORT" once the socket is bound.
  const std::regex url_re(R"(listening on http://127\.0\.0\.1:(\d+))");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(600);
  while (port_ == 0) {
    std::smatch m;
    const std::string text = log().substr(log_start);
    if (std::regex_search(text, m, url_re)) {
      port_ = static_cast<std::uint16_t>(std::stoi(m[1]));
      break;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("diffusiond exited during start-up:\n" + text);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill_hard();
      throw std::runtime_error("diffusiond printed no URL within 600 s:\n" + text);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // With API keys, /readyz needs one: the first key given on the command line.
  Headers auth;
  for (std::size_t i = 0; i + 1 < extra_args.size(); ++i)
    if (extra_args[i] == "--api-key" || extra_args[i] == "--priority-api-key") {
      auth.push_back({"Authorization", "Bearer " + extra_args[i + 1]});
      break;
    }
  while (true) {
    try {
      if (http_request(port_, "GET", "/readyz", "", auth).status == 200) break;
    } catch (const std::exception&) {
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill_hard();
      throw std::runtime_error("diffusiond never became ready:\n" + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

DaemonProcess::~DaemonProcess() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  for (int i = 0; i < 300; ++i) {  // up to 30 s for the drain
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill_hard();
}

void DaemonProcess::kill_hard() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int DaemonProcess::terminate_and_wait() {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string DaemonProcess::log() const {
  std::ifstream f(log_file_);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace diffusiond::testing
