// A throw-away PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, on a free
// loopback port, trust authentication, fsync off; stopped and removed by the destructor. The
// binaries come from $DIFFUSIOND_PG_BIN, else the newest /usr/lib/postgresql/*/bin (Debian keeps
// initdb off PATH), else PATH. PostgreSQL refuses to run as root: as root it runs as the
// `postgres` user (else `nobody`) through runuser.
// Owner: a test. Thread-safety: none.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace diffusiond::testing {

class PgServer {
 public:
  // The folder holding initdb and pg_ctl, or nullopt when PostgreSQL is not installed.
  static std::optional<std::filesystem::path> find_binaries();

  // initdb + start; throws std::runtime_error with the server's log. durable: fsync on (as a
  // production server; the benchmark), else off (the tests).
  explicit PgServer(bool durable = false);
  ~PgServer();
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  std::string url() const;  // postgresql://postgres@127.0.0.1:PORT/postgres
  std::uint16_t port() const { return port_; }
  void stop();   // pg_ctl stop -m fast (clients are disconnected)
  void start();  // on the same port and data
  std::string log() const;

 private:
  int run(const std::string& command) const;  // as the server's user; returns the exit status

  std::filesystem::path bin_;
  std::filesystem::path dir_;
  std::string run_as_;  // "" = this user
  std::uint16_t port_ = 0;
  bool running_ = false;
  bool durable_ = false;
};

}  // namespace diffusiond::testing
