// Accepts TCP connections, asks Admission (http/admission.h) for a slot, closes the connection
// evicted for it, and starts a Session for each admitted one on its own strand; a refused one is
// answered 503 or 429 (JSON, Retry-After) at once and closed. Owner: HttpServer (one per server).
// Thread-safety: start() once from the control thread; close() from any thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <memory>

#include "http/session.h"

namespace diffusiond::http_api {

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(boost::asio::io_context& ioc, ServerContext& context, SessionRegistry& registry);
  // Binds and listens; throws std::runtime_error naming the address on failure.
  std::uint16_t bind(const std::string& host, std::uint16_t port);
  void start();
  void close();

 private:
  void accept_next();
  void on_accept(boost::asio::ip::tcp::socket socket);
  void refuse(boost::asio::ip::tcp::socket& socket, http::status status, std::string_view code,
              const std::string& message, int retry_after_s);

  boost::asio::io_context& ioc_;
  boost::asio::ip::tcp::acceptor acceptor_;
  ServerContext& context_;
  SessionRegistry& registry_;
  std::chrono::steady_clock::time_point last_refusal_log_{};  // the listener's strand only
};

}  // namespace diffusiond::http_api
