#include "tests/support/pg_server.h"

#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace diffusiond::testing {

namespace fs = std::filesystem;

namespace {
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("no free loopback port");
  const auto port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

bool executable(const fs::path& p) {
  return ::access(p.c_str(), X_OK) == 0;
}
}  // namespace

std::optional<fs::path> PgServer::find_binaries() {
  if (const char* env = std::getenv("DIFFUSIOND_PG_BIN"))
    if (executable(fs::path(env) / "initdb")) return fs::path(env);
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec))
    if (executable(entry.path() / "bin" / "initdb") && executable(entry.path() / "bin" / "pg_ctl"))
      found.push_back(entry.path() / "bin");
  std::sort(found.begin(), found.end(), [](const fs::path& a, const fs::path& b) {
    return std::atoi(a.parent_path().filename().c_str()) <
           std::atoi(b.parent_path().filename().c_str());
  });
  if (!found.empty()) return found.back();
  if (const char* path = std::getenv("PATH")) {
    std::stringstream dirs(path);
    std::string dir;
    while (std::getline(dirs, dir, ':'))
      if (!dir.empty() && executable(fs::path(dir) / "initdb") &&
          executable(fs::path(dir) / "pg_ctl"))
        return fs::path(dir);
  }
  return std::nullopt;
}

PgServer::PgServer(bool durable) : durable_(durable) {
  auto bin = find_binaries();
  if (!bin) throw std::runtime_error("PostgreSQL (initdb, pg_ctl) is not installed");
  bin_ = *bin;
  std::string tmpl = (fs::temp_directory_path() / "diffusiond-pg-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  if (::geteuid() == 0) {
    const passwd* user = ::getpwnam("postgres");
    if (!user) user = ::getpwnam("nobody");
    if (!user) throw std::runtime_error("running as root and no postgres or nobody user");
    run_as_ = user->pw_name;
    if (::chown(dir_.c_str(), user->pw_uid, user->pw_gid) != 0)
      throw std::runtime_error("cannot chown " + dir_.string());
  }
  port_ = free_port();
  if (run("'" + (bin_ / "initdb").string() + "' -D '" + (dir_ / "data").string() +
          "' -A trust -U postgres --no-sync > '" + (dir_ / "initdb.log").string() + "' 2>&1") != 0)
    throw std::runtime_error("initdb failed:\n" + log());
  start();
}

PgServer::~PgServer() {
  if (running_)
    run("'" + (bin_ / "pg_ctl").string() + "' -D '" + (dir_ / "data").string() +
        "' -m immediate -w stop > /dev/null 2>&1");
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

int PgServer::run(const std::string& command) const {
  // Through a script, so that the quoting is the same as the server's user or as this one.
  const fs::path script = dir_ / "command.sh";
  {
    std::ofstream out(script);
    out << "cd /tmp && " << command << "\n";
  }
  ::chmod(script.c_str(), 0755);
  const std::string full =
      (run_as_.empty() ? "" : "runuser -u " + run_as_ + " -- ") + "sh '" + script.string() + "'";
  const int status = std::system(full.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

void PgServer::start() {
  const std::string options = "-p " + std::to_string(port_) + " -k '" + dir_.string() +
                              "' -c listen_addresses=127.0.0.1 -c max_connections=200" +
                              (durable_ ? "" : " -c fsync=off -c synchronous_commit=off");
  if (run("'" + (bin_ / "pg_ctl").string() + "' -D '" + (dir_ / "data").string() + "' -o \"" +
          options + "\" -l '" + (dir_ / "server.log").string() + "' -w -t 60 start > /dev/null") !=
      0)
    throw std::runtime_error("pg_ctl start failed:\n" + log());
  running_ = true;
}

void PgServer::stop() {
  if (!running_) return;
  if (run("'" + (bin_ / "pg_ctl").string() + "' -D '" + (dir_ / "data").string() +
          "' -m fast -w stop > /dev/null") != 0)
    throw std::runtime_error("pg_ctl stop failed:\n" + log());
  running_ = false;
}

std::string PgServer::url() const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/postgres";
}

std::string PgServer::log() const {
  std::string out;
  for (const char* name : {"initdb.log", "server.log"}) {
    std::ifstream in(dir_ / name);
    std::stringstream text;
    text << in.rdbuf();
    out += std::string("--- ") + name + "\n" + text.str();
  }
  return out;
}

}  // namespace diffusiond::testing
