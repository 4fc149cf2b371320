// An HttpServer on a free loopback port over a FakeImageService, for the real-HTTP tests.
#pragma once

#include <stdlib.h>

#include <spdlog/spdlog.h>
#include <filesystem>
#include <memory>

#include "fake_service.h"
#include "http/server.h"
#include "pipeline/media/posix_fs.h"
#include "tests/support/http_client.h"

namespace diffusiond::testing {

inline std::filesystem::path make_temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "diffusiond-http-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

struct ServerFixture {
  explicit ServerFixture(HttpOptions options = {}) : dir(make_temp_dir()), service(dir) {
    spdlog::set_level(spdlog::level::warn);  // one line per request is noise here
    options.host = "127.0.0.1";
    options.port = 0;
    server = std::make_unique<HttpServer>(service, options);
    port = server->start();
  }
  ~ServerFixture() {
    server.reset();
    std::error_code ec;
    remove_tree(dir, ec);
  }
  HttpReply get(const std::string& target, const Headers& h = {}) {
    return http_request(port, "GET", target, "", h);
  }
  HttpReply post(const std::string& target, const std::string& body, const Headers& h = {}) {
    return http_request(port, "POST", target, body, h);
  }

  std::filesystem::path dir;
  FakeImageService service;
  std::unique_ptr<HttpServer> server;
  std::uint16_t port = 0;
};

}  // namespace diffusiond::testing
