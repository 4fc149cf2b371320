// One accepted TCP connection: reads requests (header and body timeouts, size limits), hands
// each to the router, writes answers (keep-alive), and carries event streams.
// Owner: engineer "http". A Session lives on its own strand; it is held by shared_ptr by its
// pending operations. Only close() and the poster are safe from other threads.
#pragma once

#include <array>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "http/exchange.h"

namespace diffusiond::http_api {

class Session;

// Every live session of a server, so stop() can close them. Thread-safe.
class SessionRegistry {
 public:
  void add(const std::shared_ptr<Session>& s);
  void remove(const Session* s);
  std::vector<std::shared_ptr<Session>> snapshot() const;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<const Session*, std::weak_ptr<Session>> sessions_;
};

class Session : public Exchange, public std::enable_shared_from_this<Session> {
 public:
  // over_capacity: the connection cap was reached; the first request is answered 503.
  Session(boost::asio::ip::tcp::socket socket, ServerContext& context, SessionRegistry& registry,
          bool over_capacity);
  ~Session() override;

  void start();
  // Any thread: closes the connection soon.
  void close();
  // Only while no I/O thread runs (server shutdown): drops the event subscription now.
  void drop_subscription_now() { subscription_.reset(); }

  // Exchange
  const Request& request() const override { return request_; }
  void respond(Response response) override;
  void keep(std::unique_ptr<Subscription> subscription) override;
  Poster poster() override;
  void start_event_stream() override;
  void send_event_data(std::string text) override;
  void end_event_stream() override;

 private:
  void read_header();
  void on_header(boost::beast::error_code ec);
  void read_body();
  void on_body(boost::beast::error_code ec);
  void dispatch();
  void reject(http::status status, std::string_view code, std::string_view message);
  void on_written(bool keep_alive, boost::beast::error_code ec);
  void watch_peer();
  void write_next_chunk();
  void arm_keepalive();
  void linger_close();
  void discard_more();
  void close_now();
  void log_stream_end(const char* how) const;  // info line: how the event stream ended
  void fail_internal(const char* what);

  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  ServerContext& context_;
  SessionRegistry& registry_;
  bool over_capacity_;
  std::string peer_;

  std::optional<http::request_parser<http::string_body>> parser_;
  Request request_;
  std::uint64_t request_seq_ = 0;
  bool answered_ = true;  // the current request has been answered (or none is open)
  bool closed_ = false;
  bool lingering_ = false;
  bool request_unread_ = false;  // part of the request body was never read
  std::chrono::steady_clock::time_point request_start_;
  std::shared_ptr<void> self_hold_;  // keeps the session alive while it waits on the service
  std::unique_ptr<Subscription> subscription_;
  std::shared_ptr<Response> writing_response_;

  // Event stream
  bool streaming_ = false;
  bool stream_ending_ = false;
  std::size_t stream_chunks_ = 0;  // event-stream chunks queued (events and keep-alives)
  std::chrono::steady_clock::time_point stream_start_;
  bool stream_writing_ = false;
  std::deque<std::string> stream_queue_;
  boost::asio::steady_timer keepalive_timer_;
  std::array<char, 4096> discard_{};
  std::size_t discarded_ = 0;
};

}  // namespace diffusiond::http_api
