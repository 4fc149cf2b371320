// Accepts TCP connections and starts a Session for each on its own strand; past the connection
// cap, the session answers 503 and closes. Owner: HttpServer (one per server).
// Thread-safety: start() once from the control thread; close() from any thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
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

  boost::asio::io_context& ioc_;
  boost::asio::ip::tcp::acceptor acceptor_;
  ServerContext& context_;
  SessionRegistry& registry_;
};

}  // namespace diffusiond::http_api
