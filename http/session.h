// One accepted TCP connection: reads requests (header and body timeouts, size limits), hands
// each to the router, writes answers (keep-alive), and carries event streams.
//
// Ownership: http/listener.cpp creates each Session (make_shared) on its own strand and starts
// it; from then on only the Session's pending operations (reads, writes, the peer watch, the
// keep-alive timer, the hold timer) own it by shared_ptr, plus SessionRegistry snapshots taken by
// HttpServerImpl (http/server.cpp) to close it. Posters given out by poster() hold it weakly.
// Threads: everything runs on the Session's strand, except close() (any thread) and the poster
// (any thread; the function it is given runs on the strand) and drop_subscription_now() (only
// while no I/O thread runs). The Exchange methods are for the strand (the router's handlers and
// functions given to a poster).
//
// Design: one explicit state machine (State below) rather than Beast's "advanced server" split
// into an HttpSession and an upgraded event-stream object. An event stream here is not a
// protocol upgrade: it starts as the answer to one request of the connection, shares its socket,
// peer watch, lingering close, logging and Exchange/poster plumbing, and ends the connection;
// splitting it off would duplicate that plumbing and hand the socket over mid-request. Every
// change of state_ goes through enter(), which checks the transition against one table; an
// illegal one is a logic error: logged, and the connection is closed (never a crash or a hang).
//
//   starting -> idle -> reading_header -> [writing_continue ->] reading_body -> handling
//   handling -> writing_response | streaming | waiting
//   waiting -> writing_response | streaming            (a poster answers)
//   writing_response -> idle | reading_header (keep-alive; pipelined bytes) | lingering
//   reading_header | reading_body -> writing_response  (400/413/431/503: then lingering)
//   streaming -> stream_ending -> lingering
//   any state but closed -> closed
//
// Lifetime while `waiting` (the handler returned without answering and waits on the service):
// the peer watch's async_wait holds the Session, but it stops once the client's next (pipelined)
// request is readable, so entering `waiting` also arms hold_timer_ (never expires) whose pending
// wait holds it too; leaving `waiting` cancels it. This replaces a self-owning shared_ptr that
// had to be reset by hand on every way out and, at server shutdown, leaked the Session: a
// pending wait is destroyed with the io_context.
//
// Slots (http/admission.h): the Session holds the slot the listener was given for it until it
// is destroyed. From the start of an answer (or the connection's) until a request's first byte
// the slot may be evicted (the listener then evict()s the Session): an answer being written is
// finished, then the connection closes; the first byte of a request makes the slot busy, or
// closes the connection if it was evicted meanwhile. A probe Session (over the cap) answers only
// /healthz and /readyz, then closes.
#pragma once

#include <array>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
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
  enum class State : std::uint8_t {
    starting,          // accepted; the first read is not started yet
    idle,              // waiting for a request's first byte (evictable; idle timeout)
    reading_header,    // header read pending (header timeout, header limit)
    writing_continue,  // "100 Continue" being written
    reading_body,      // body read pending (body timeout, body limit)
    handling,          // route_request() is on the stack
    waiting,           // the handler returned unanswered: peer watched, hold_timer_ armed
    writing_response,  // an answer being written; then keep-alive or lingering
    streaming,         // event stream open: chunk writes, keep-alive comments, peer watched
    stream_ending,     // event stream ended: the queued chunks drain, then lingering
    lingering,         // FIN sent; discarding what the client still sends, for a while
    closed,            // socket closed; every pending completion only returns
  };
  static const char* state_name(State s);
  // The transition table (also the diagram above).
  static bool legal(State from, State to);

  // slot: from Admission::admit, released by the destructor. probe: over the cap, only a health
  // probe is answered (then the connection closes), any other request 503.
  Session(boost::asio::ip::tcp::socket socket, ServerContext& context, SessionRegistry& registry,
          std::uint64_t slot, bool probe);
  ~Session() override;

  void start();
  // Any thread: closes the connection soon.
  void close();
  // Any thread: Admission gave this connection's slot away; closes it once its answer (if one
  // is being written) is out.
  void evict();
  // Only while no I/O thread runs (server shutdown): drops the event subscription now.
  void drop_subscription_now() { subscription_.reset(); }

  // Exchange. Calls that come when the request is no longer open for them (answered, stream
  // ended, connection closed) are dropped, as http/exchange.h says.
  const Request& request() const override { return request_; }
  void respond(Response response) override;
  void keep(std::unique_ptr<Subscription> subscription) override;
  Poster poster() override;
  void start_event_stream() override;
  void send_event_data(std::string text) override;
  void end_event_stream() override;

 private:
  // The one way state_ changes. Illegal: logs, closes the connection, returns false.
  bool enter(State to);
  // For a completion handler of an operation started in `expected`: true when still there;
  // false when closed meanwhile (silently) or in any other state (logic error: logged, closed).
  bool still_in(State expected, const char* what);
  bool request_open() const { return state_ == State::handling || state_ == State::waiting; }

  // After an answer (or at the start): the next request's header, straight away when pipelined
  // bytes wait in buffer_, else `idle` until its first byte.
  void await_request();
  void on_first_bytes(boost::beast::error_code ec, std::size_t n);
  void read_header();
  void on_header(boost::beast::error_code ec);
  // Over the per-client request rate: answers 429 and returns true.
  bool rate_limited();
  void read_body();
  void on_body(boost::beast::error_code ec);
  void dispatch();
  void reject(http::status status, std::string_view code, std::string_view message);
  // Writes the answer (from handling, waiting, or a rejection while reading).
  void send_answer(Response response, bool close_after);
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
  std::uint64_t slot_;
  bool probe_;
  std::string peer_;
  Client client_;  // whom the per-client limits count

  State state_ = State::starting;
  std::optional<http::request_parser<http::string_body>> parser_;
  Request request_;
  std::uint64_t request_seq_ = 0;  // the request a poster or peer watch belongs to
  std::chrono::steady_clock::time_point request_start_;
  std::chrono::steady_clock::time_point header_deadline_;  // the whole header, idle time included
  std::unique_ptr<Subscription> subscription_;
  std::shared_ptr<Response> writing_response_;
  boost::asio::steady_timer hold_timer_;  // pending wait keeps the Session alive in `waiting`

  // Event stream. A chunk write is in flight exactly while stream_queue_ is not empty (its front).
  std::optional<std::chrono::steady_clock::time_point> stream_start_;  // set: this was a stream
  std::size_t stream_chunks_ = 0;  // event-stream chunks queued (events and keep-alives)
  std::deque<std::string> stream_queue_;
  boost::asio::steady_timer keepalive_timer_;
  std::array<char, 4096> discard_{};
  std::size_t discarded_ = 0;
};

}  // namespace diffusiond::http_api
