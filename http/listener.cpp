#include "http/listener.h"

#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <sstream>

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

// A refused connection gets its answer at once, without a Session: what the client already
// sent is read and dropped (so the close sends FIN, not RST), the answer is written (it fits the
// empty send buffer) and the socket closed. Nothing waits, so refusals cost no slot.
void Listener::refuse(tcp::socket& socket, http::status status, std::string_view code,
                      const std::string& message, int retry_after_s) {
  context_.stats.connection_rejected();
  const auto now = std::chrono::steady_clock::now();
  if (now - last_refusal_log_ > std::chrono::seconds(10)) {  // a flood must not flood the log
    last_refusal_log_ = now;
    spdlog::warn("http: refusing connections ({}: {}); see diffusiond_http_connections_*", code,
                 message);
  }
  auto res = error_response(status, code, message);
  res.set(http::field::retry_after, std::to_string(retry_after_s));
  res.set(http::field::server, "diffusiond/" DIFFUSIOND_VERSION);
  res.keep_alive(false);
  res.prepare_payload();
  std::ostringstream text;
  text << res;
  const std::string bytes = text.str();
  const int fd = socket.native_handle();
  char sink[4096];
  for (int i = 0; i < 16 && ::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; ++i) {
  }
  (void)::send(fd, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  boost::system::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

void Listener::on_accept(tcp::socket socket) {
  boost::system::error_code ec;
  const auto peer = socket.remote_endpoint(ec);
  if (ec) return;  // already gone
  const Admission::Decision d = context_.admission.admit(peer.address());
  if (d.evicted) context_.stats.connection_evicted();
  if (d.victim) d.victim->evict();
  const auto& o = context_.options;
  switch (d.verdict) {
    case Admission::Verdict::refuse_client:
      refuse(socket, http::status::too_many_requests, "too_many_client_connections",
             "this client has " + std::to_string(o.max_connections_per_client) +
                 " connections open; close one or try again shortly",
             1);
      return;
    case Admission::Verdict::refuse_full:
      refuse(socket, http::status::service_unavailable, "too_many_connections",
             "the server has " + std::to_string(o.max_connections) +
                 " connections open; try again shortly",
             1);
      return;
    case Admission::Verdict::admit:
    case Admission::Verdict::probe:
      break;
  }
  socket.set_option(tcp::no_delay(true), ec);
  std::make_shared<Session>(std::move(socket), context_, registry_, d.slot,
                            d.verdict == Admission::Verdict::probe)
      ->start();
}

void Listener::accept_next() {
  acceptor_.async_accept(
      asio::make_strand(ioc_),
      [self = shared_from_this()](boost::system::error_code ec, tcp::socket socket) {
        if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
        if (ec) {
          // E.g. out of file descriptors: log, pause briefly by retrying later, keep serving.
          spdlog::warn("http: accept failed: {}", ec.message());
        } else {
          try {
            self->on_accept(std::move(socket));
          } catch (const std::exception& e) {
            spdlog::error("http: could not start a connection: {}", e.what());
          }
        }
        self->accept_next();
      });
}

}  // namespace diffusiond::http_api
