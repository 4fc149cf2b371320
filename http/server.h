// The HTTP/JSON front end of diffusiond (Boost.Beast over Asio, a small I/O thread pool).
// Owner: the executable (daemon/cmd_serve.cpp) constructs one HttpServer over its ImageService,
// calls start() once, stop_accepting() when draining, and stop() before destroying it.
// Thread-safety: start/stop_accepting/stop are called from one control thread (main); every
// request is answered on the server's own I/O threads, which never wait on a device.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "daemon/api/service.h"

namespace diffusiond {

// Every limit the HTTP edge enforces (connections, sizes, timeouts). Defaults are the documented
// safe defaults.
struct HttpOptions {
  std::string host = "127.0.0.1";  // listen address; loopback unless told otherwise
  std::uint16_t port = 8080;       // 0 = pick a free port (start() returns it)
  int io_threads = 2;

  // Bearer tokens. Empty = no authentication. When set, every route needs
  // "Authorization: Bearer <key>" except /healthz and the web UI's own files (GET / and its
  // static assets), so the page can load and ask the user for a key.
  std::vector<std::string> api_keys;
  // The subset of api_keys whose requests may use a priority above 0 (the core refuses it to
  // everyone else, and to everyone when no key is configured).
  std::vector<std::string> priority_api_keys;

  // Browser guards (http/browser_guard.h): Host names accepted besides loopback names, IP
  // literals and `host` ("*": any), and origins (scheme://host[:port]) allowed to POST/DELETE
  // besides the daemon's own UI ("*": any).
  std::vector<std::string> allowed_hosts;
  std::vector<std::string> allowed_origins;

  std::size_t max_body_bytes = 64 * 1024;  // larger bodies: 413
  // POST /sdapi/v1/png-info only (its body is a whole image in base64); request_framing.h
  // body_limit_for() is the one place that picks a request's limit.
  std::size_t max_image_body_bytes = 16 * 1024 * 1024;
  std::size_t max_header_bytes = 16 * 1024;  // larger headers: 431
  // (The bounds on a request's values are the core's: daemon/api/request.h RequestLimits.)
  int max_list_limit = 500;
  std::size_t max_list_bytes = 1024 * 1024;  // GET /jobs answers stop near this size ("next")   //
                                             // GET /jobs?limit= upper bound (default 50)

  // Connections (http/admission.h; the rules: http/README.md "Connections and per-client
  // limits"). At the cap a new connection evicts the longest-idle one; with none idle, up to
  // over_cap_slots more may still ask /healthz or /readyz (anything else: 503), and beyond those
  // a connection is answered 503 at once and closed.
  int max_connections = 256;
  int over_cap_slots = 64;
  // Per client address (http/client_limits.h): connections, and requests per second as a token
  // bucket (rate_limit 0: no limit; rate_burst: the bucket). Loopback clients are exempt unless
  // limit_loopback (they are local processes or a reverse proxy speaking for everyone).
  int max_connections_per_client = 64;
  double rate_limit = 0;
  double rate_burst = 20;
  bool limit_loopback = false;

  std::chrono::seconds header_timeout{15};  // whole request header, keep-alive idle time included
  // Under pressure (3/4 of max_connections taken) an idle connection waits at most this long for
  // its next request, and a connection over the cap this long for its whole header.
  std::chrono::seconds busy_idle_timeout{5};
  std::chrono::seconds body_timeout{30};   // whole request body
  std::chrono::seconds write_timeout{60};  // each response write
  std::chrono::seconds sse_keepalive{15};  // comment line on idle event streams

  // The daemon's address as clients reach it ("https://images.example.com", no trailing
  // slash), for the absolute image URLs of the OpenAI dialect (response_format "url"). Empty:
  // "http://" + the request's Host header.
  std::string public_url;
};

class HttpServerImpl;

class HttpServer {
 public:
  // `service` must outlive the server.
  HttpServer(ImageService& service, HttpOptions options);
  ~HttpServer();  // calls stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port, starts the I/O threads and returns the bound port (useful with port 0).
  // Throws std::runtime_error naming the address when it cannot bind.
  std::uint16_t start();
  // Closes the listening socket; requests on open connections are still answered.
  void stop_accepting();
  // Closes every connection (event streams and waiting requests included), joins the I/O
  // threads. Idempotent.
  void stop();

 private:
  std::unique_ptr<HttpServerImpl> impl_;
};

}  // namespace diffusiond
