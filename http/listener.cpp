#include "http/listener.h"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

namespace diffusiond::http_api {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

Listener::Listener(asio::io_context& ioc, ServerContext& context, SessionRegistry& registry)
    : ioc_(ioc), acceptor_(asio::make_strand(ioc)), context_(context), registry_(registry) {}

std::uint16_t Listener::bind(const std::string& host, std::uint16_t port) {
  const std::string where = host + ":" + std::to_string(port);
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec)
    throw std::runtime_error("cannot listen on " + where + ": '" + host + "' is not an IP address");
  const tcp::endpoint endpoint(address, port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("cannot listen on " + where + ": " + ec.message());
  return acceptor_.local_endpoint().port();
}

void Listener::start() {
  asio::dispatch(acceptor_.get_executor(), [self = shared_from_this()] { self->accept_next(); });
}

void Listener::close() {
  asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
    boost::system::error_code ec;
    self->acceptor_.close(ec);
  });
}

void Listener::accept_next() {
  acceptor_.async_accept(asio::make_strand(ioc_), [self = shared_from_this()](
                                                      boost::system::error_code ec,
                                                      tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
    if (ec) {
      // E.g. out of file descriptors: log, pause briefly by retrying later, keep serving.
      spdlog::warn("http: accept failed: {}", ec.message());
    } else {
      const int open = self->context_.stats.connections_open();
      const int cap = self->context_.options.max_connections;
      if (open >= cap + 64) {
        self->context_.stats.connection_rejected();  // far over: just close
      } else {
        boost::system::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        std::make_shared<Session>(std::move(socket), self->context_, self->registry_, open >= cap)
            ->start();
      }
    }
    self->accept_next();
  });
}

}  // namespace diffusiond::http_api
