#include "http/session.h"

#include <sys/socket.h>

#include <cerrno>

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>

#include "http/request_framing.h"
#include "http/router.h"
#include "http/sse.h"

namespace diffusiond::http_api {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;

void SessionRegistry::add(const std::shared_ptr<Session>& s) {
  std::lock_guard lock(mutex_);
  sessions_[s.get()] = s;
}

void SessionRegistry::remove(const Session* s) {
  std::lock_guard lock(mutex_);
  sessions_.erase(s);
}

std::vector<std::shared_ptr<Session>> SessionRegistry::snapshot() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Session>> out;
  for (const auto& [ptr, weak] : sessions_) {
    if (auto s = weak.lock()) out.push_back(std::move(s));
  }
  return out;
}

const char* Session::state_name(State s) {
  switch (s) {
    case State::starting:
      return "starting";
    case State::idle:
      return "idle";
    case State::reading_header:
      return "reading_header";
    case State::writing_continue:
      return "writing_continue";
    case State::reading_body:
      return "reading_body";
    case State::handling:
      return "handling";
    case State::waiting:
      return "waiting";
    case State::writing_response:
      return "writing_response";
    case State::streaming:
      return "streaming";
    case State::stream_ending:
      return "stream_ending";
    case State::lingering:
      return "lingering";
    case State::closed:
      return "closed";
  }
  return "?";
}

bool Session::legal(State from, State to) {
  using S = State;
  if (to == S::closed) return from != S::closed;
  switch (from) {
    case S::starting:
      return to == S::idle;
    case S::idle:
      return to == S::reading_header;
    case S::reading_header:
      return to == S::writing_continue || to == S::reading_body || to == S::writing_response;
    case S::writing_continue:
      return to == S::reading_body;
    case S::reading_body:
      return to == S::handling || to == S::writing_response;
    case S::handling:
      return to == S::waiting || to == S::writing_response || to == S::streaming;
    case S::waiting:
      return to == S::writing_response || to == S::streaming;
    case S::writing_response:
      return to == S::idle || to == S::reading_header || to == S::lingering;
    case S::streaming:
      return to == S::stream_ending;
    case S::stream_ending:
      return to == S::lingering;
    case S::lingering:
    case S::closed:
      return false;
  }
  return false;
}

bool Session::enter(State to) {
  const State from = state_;
  if (!legal(from, to)) {
    spdlog::error("http: {} illegal connection state change {} -> {} (a bug); closing", peer_,
                  state_name(from), state_name(to));
    close_now();
    return false;
  }
  state_ = to;
  if (from == State::waiting) {
    hold_timer_.cancel();  // releases the hold
    beast::error_code ignored;
    stream_.socket().cancel(ignored);  // ends watch_peer's wait
  }
  return true;
}

bool Session::still_in(State expected, const char* what) {
  if (state_ == expected) return true;
  if (state_ != State::closed) {
    spdlog::error("http: {} {} completed in state {}, expected {} (a bug); closing", peer_, what,
                  state_name(state_), state_name(expected));
    close_now();
  }
  return false;
}

Session::Session(tcp::socket socket, ServerContext& context, SessionRegistry& registry,
                 std::uint64_t slot, bool probe)
    : stream_(std::move(socket)),
      context_(context),
      registry_(registry),
      slot_(slot),
      probe_(probe),
      hold_timer_(stream_.get_executor()),
      keepalive_timer_(stream_.get_executor()) {
  beast::error_code ec;
  const auto ep = stream_.socket().remote_endpoint(ec);
  if (!ec) {
    peer_ = ep.address().to_string() + ":" + std::to_string(ep.port());
    client_ = client_of(ep.address(), context_.options);
  }
  context_.stats.connection_opened();
}

Session::~Session() {
  context_.admission.release(slot_);
  context_.stats.connection_closed();
  if (stream_start_) context_.stats.event_stream_closed();
  registry_.remove(this);
}

void Session::start() {
  registry_.add(shared_from_this());
  asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->await_request(); });
}

void Session::close() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] { self->close_now(); });
}

void Session::evict() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    // Writing an answer: it is finished first (await_request then sees the eviction). Any other
    // state has seen it already through Admission::busy.
    if (self->state_ == State::idle || self->state_ == State::lingering) self->close_now();
  });
}

void Session::await_request() {
  if (state_ == State::closed) return;  // close() ran before start()'s first read
  const auto& o = context_.options;
  const auto now = std::chrono::steady_clock::now();
  // A probe (over the cap) has the short timeout for its whole header; others the header timeout,
  // counted from now (the idle wait is part of it).
  header_deadline_ =
      now + (probe_ ? std::min(o.busy_idle_timeout, o.header_timeout) : o.header_timeout);
  // A pipelined request is here already; evicted while answering: close.
  if (buffer_.size() > 0) {
    if (!context_.admission.busy(slot_)) return close_now();
    read_header();
    return;
  }
  if (!enter(State::idle)) return;
  const Admission::Idle idle = context_.admission.idle(slot_, weak_from_this());
  if (idle == Admission::Idle::evicted) return close_now();
  const bool pressure = idle == Admission::Idle::pressure;
  stream_.expires_at(pressure ? std::min(header_deadline_, now + o.busy_idle_timeout)
                              : header_deadline_);
  stream_.async_read_some(buffer_.prepare(4096),
                          [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                            self->on_first_bytes(ec, n);
                          });
}

void Session::on_first_bytes(beast::error_code ec, std::size_t n) {
  if (!still_in(State::idle, "idle read")) return;
  if (ec) {
    if (ec == beast::error::timeout) spdlog::debug("http: {} idle; closing", peer_);
    close_now();
    return;
  }
  buffer_.commit(n);
  // Evicted meanwhile: its slot went to a new connection (a request racing the eviction sees
  // the close, as any keep-alive client may; RFC 9112 9.3.1).
  if (!context_.admission.busy(slot_)) return close_now();
  read_header();
}

void Session::read_header() {
  if (!enter(State::reading_header)) return;
  parser_.emplace();
  apply_limits(*parser_, context_.options);
  stream_.expires_at(header_deadline_);
  http::async_read_header(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_header(ec); });
}

void Session::on_header(beast::error_code ec) {
  if (!still_in(State::reading_header, "header read")) return;
  request_start_ = std::chrono::steady_clock::now();
  if (ec) {
    request_ = Request{};
    if (auto refusal = header_read_failed(ec, context_.options)) {
      reject(refusal->status, refusal->code, refusal->message);
    } else {
      close_now();
    }
    return;
  }
  auto& header = parser_->get();
  request_.base() = header.base();  // for the log line and keep-alive of a rejection
  if (probe_ && !is_health_probe(request_)) {
    context_.stats.connection_rejected();
    reject(http::status::service_unavailable, "too_many_connections",
           "the server has " + std::to_string(context_.options.max_connections) +
               " connections open; try again shortly");
    return;
  }
  if (auto refusal = check_request_header(*parser_, context_.options)) {
    reject(refusal->status, refusal->code, refusal->message);
    return;
  }
  if (beast::iequals(header[http::field::expect], "100-continue")) {
    if (!enter(State::writing_continue)) return;
    auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
    stream_.expires_after(context_.options.write_timeout);
    http::async_write(stream_, *cont,
                      [self = shared_from_this(), cont](beast::error_code ec2, std::size_t) {
                        if (!self->still_in(State::writing_continue, "100-continue write")) return;
                        if (ec2) return self->close_now();
                        self->read_body();
                      });
    return;
  }
  read_body();
}

void Session::read_body() {
  if (!enter(State::reading_body)) return;
  stream_.expires_after(context_.options.body_timeout);
  http::async_read(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_body(ec); });
}

void Session::on_body(beast::error_code ec) {
  if (!still_in(State::reading_body, "body read")) return;
  if (ec) {
    if (auto refusal = body_read_failed(ec, body_limit_for(parser_->get(), context_.options))) {
      reject(refusal->status, refusal->code, refusal->message);
      return;
    }
    if (ec == beast::error::timeout) {
      spdlog::info("http: {} request body not received within {}s; closing", peer_,
                   context_.options.body_timeout.count());
    }
    close_now();
    return;
  }
  stream_.expires_never();
  request_ = parser_->release();
  dispatch();
}

void Session::dispatch() {
  ++request_seq_;
  if (probe_) request_.keep_alive(false);  // over the cap: one health answer, then close
  if (!enter(State::handling)) return;
  try {
    if (!rate_limited()) route_request(context_, *this);
  } catch (const std::exception& e) {
    fail_internal(e.what());
  }
  if (state_ == State::handling) {
    // The handler waits on the service: stay alive and notice if the client goes away.
    if (!enter(State::waiting)) return;
    hold_timer_.expires_at(std::chrono::steady_clock::time_point::max());
    hold_timer_.async_wait([self = shared_from_this()](beast::error_code) {});
    watch_peer();
  }
}

bool Session::rate_limited() {
  if (!client_.limited || is_health_probe(request_)) return false;
  const int wait_s = context_.rate_limiter.take(client_.address, std::chrono::steady_clock::now());
  if (wait_s == 0) return false;
  context_.stats.request_rate_limited();
  auto res = error_response(http::status::too_many_requests, "rate_limited",
                            fmt::format("more than {:g} requests per second from {}; retry "
                                        "after {} s",
                                        context_.options.rate_limit, client_.address, wait_s));
  res.set(http::field::retry_after, std::to_string(wait_s));
  respond(std::move(res));
  return true;
}

void Session::fail_internal(const char* what) {
  spdlog::error("http: {} {} failed: {}", std::string(request_.method_string()),
                loggable_target(request_), what);
  if (state_ == State::streaming) {
    end_event_stream();
  } else if (request_open()) {
    respond(error_response(http::status::internal_server_error, "internal_error", what));
  }
}

void Session::reject(http::status status, std::string_view code, std::string_view message) {
  ++request_seq_;
  request_.keep_alive(false);
  auto res = error_response(status, code, message);
  if (status == http::status::service_unavailable) res.set(http::field::retry_after, "1");
  res.keep_alive(false);
  // Part of the request (its body) stays unread: the connection closes after this answer.
  send_answer(std::move(res), /*close_after=*/true);
}

void Session::respond(Response response) {
  if (!request_open()) return;  // answered already, streaming, or closed
  send_answer(std::move(response), /*close_after=*/false);
}

void Session::send_answer(Response response, bool close_after) {
  if (!enter(State::writing_response)) return;
  context_.admission.idle(slot_, weak_from_this());  // answered: evictable once written
  subscription_.reset();
  beast::error_code ignored;
  stream_.socket().cancel(ignored);  // ends watch_peer's wait

  finalize(response, request_);
  const unsigned status = status_code(response);
  context_.stats.request_answered(status);
  const bool keep_alive =
      std::visit([](const auto& m) { return m.keep_alive(); }, response) && !close_after;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - request_start_)
          .count();
  const auto level = (status < 400 && request_.method() == http::verb::get) ? spdlog::level::debug
                                                                            : spdlog::level::info;
  spdlog::log(level, "http: {} {} {} -> {} ({:.1f} ms)", peer_,
              std::string(request_.method_string()), loggable_target(request_), status, ms);

  writing_response_ = std::make_shared<Response>(std::move(response));
  stream_.expires_after(context_.options.write_timeout);
  std::visit(
      [&](auto& msg) {
        http::async_write(
            stream_, msg,
            [self = shared_from_this(), keep_alive](beast::error_code ec, std::size_t) {
              self->on_written(keep_alive, ec);
            });
      },
      *writing_response_);
}

void Session::on_written(bool keep_alive, beast::error_code ec) {
  writing_response_.reset();
  if (!still_in(State::writing_response, "response write")) return;
  if (ec) return close_now();
  if (!keep_alive) return linger_close();
  await_request();
}

void Session::keep(std::unique_ptr<Subscription> subscription) {
  subscription_ = std::move(subscription);
}

Exchange::Poster Session::poster() {
  return [weak = weak_from_this(), exec = stream_.get_executor(),
          seq = request_seq_](std::function<void(Exchange&)> fn) {
    asio::post(exec, [weak, seq, fn = std::move(fn)] {
      auto self = weak.lock();
      // The same request, still open for answers or events (not answered, not closed).
      if (!self || self->request_seq_ != seq ||
          !(self->request_open() || self->state_ == State::streaming)) {
        return;
      }
      try {
        fn(*self);
      } catch (const std::exception& e) {
        self->fail_internal(e.what());
      }
    });
  };
}

// While a handler waits (or streams), the socket has no read pending: wait for it to become
// readable; end-of-stream then means the client left, so drop the wait and its subscription.
// The peek never blocks: a readiness wake-up can come with nothing to read, and a blocking peek
// would then hold this connection's strand (its events, keep-alives and answer) until the client
// gave up. Nothing to read yet: keep watching. Data: the client pipelined its next request,
// which is read after this answer; the watch stops (in `waiting`, hold_timer_ still holds us).
void Session::watch_peer() {
  stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(),
                                                       seq = request_seq_](beast::error_code ec) {
    if (ec || self->request_seq_ != seq ||
        (self->state_ != State::waiting && self->state_ != State::streaming)) {
      return;  // cancelled, or the request was answered / the stream ended meanwhile
    }
    char byte;
    const ssize_t n =
        ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      self->watch_peer();
      return;
    }
    if (n <= 0) {
      spdlog::debug("http: {} left before its answer was ready", self->peer_);
      self->close_now();
    }
  });
}

void Session::start_event_stream() {
  if (!request_open()) return;  // answered already, streaming, or closed
  if (!enter(State::streaming)) return;
  stream_start_ = std::chrono::steady_clock::now();
  context_.stats.event_stream_opened();
  context_.stats.request_answered(200);
  spdlog::info("http: {} GET {} -> 200 event stream", peer_, loggable_target(request_));
  stream_queue_.push_back(
      "HTTP/1.1 200 OK\r\n"
      "Server: diffusiond/" DIFFUSIOND_VERSION
      "\r\n"
      "Content-Type: text/event-stream\r\n"
      "Cache-Control: no-store\r\n"
      "X-Accel-Buffering: no\r\n"
      "Connection: close\r\n\r\n");
  write_next_chunk();
  arm_keepalive();
  watch_peer();
}

void Session::send_event_data(std::string text) {
  if (state_ != State::streaming) return;
  ++stream_chunks_;
  stream_queue_.push_back(std::move(text));
  if (stream_queue_.size() == 1) write_next_chunk();  // else the write in flight continues
}

void Session::end_event_stream() {
  if (state_ != State::streaming) return;
  if (!enter(State::stream_ending)) return;
  log_stream_end("ended");
  subscription_.reset();
  keepalive_timer_.cancel();
  if (stream_queue_.empty()) linger_close();
}

// Writes the front of stream_queue_; pops it when written, so the queue is empty exactly when
// no write is in flight.
void Session::write_next_chunk() {
  if (stream_queue_.empty()) return;
  stream_.expires_after(context_.options.write_timeout);
  asio::async_write(stream_, asio::buffer(stream_queue_.front()),
                    [self = shared_from_this()](beast::error_code ec, std::size_t) {
                      const State s = self->state_;
                      if (s != State::streaming && s != State::stream_ending) {
                        self->still_in(State::streaming, "event-stream write");
                        return;
                      }
                      if (ec) return self->close_now();
                      self->stream_queue_.pop_front();
                      if (!self->stream_queue_.empty()) return self->write_next_chunk();
                      self->stream_.expires_never();
                      if (s == State::stream_ending) self->linger_close();
                    });
}

void Session::arm_keepalive() {
  keepalive_timer_.expires_after(context_.options.sse_keepalive);
  keepalive_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
    if (ec || self->state_ != State::streaming) return;
    if (self->stream_queue_.empty()) self->send_event_data(sse_comment("keep-alive"));
    self->arm_keepalive();
  });
}

// Sends FIN, then reads and discards what the client still sends (e.g. the rest of a refused
// body) for a short while, so the client reads our answer instead of a connection reset.
void Session::linger_close() {
  if (!enter(State::lingering)) return;
  // Done: its slot may go to a new client. Evicted already (while answering): no lingering on a
  // slot that is not ours.
  if (context_.admission.idle(slot_, weak_from_this()) == Admission::Idle::evicted) {
    return close_now();
  }
  subscription_.reset();
  keepalive_timer_.cancel();
  beast::error_code ec;
  stream_.socket().cancel(ec);  // ends watch_peer's wait
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  if (ec) return close_now();
  stream_.expires_after(std::chrono::seconds(5));
  discard_more();
}

void Session::discard_more() {
  stream_.async_read_some(asio::buffer(discard_),
                          [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                            if (!self->still_in(State::lingering, "discarding read")) return;
                            self->discarded_ += n;
                            if (ec || self->discarded_ > 8 * 1024 * 1024) return self->close_now();
                            self->discard_more();
                          });
}

void Session::log_stream_end(const char* how) const {
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - *stream_start_).count();
  spdlog::info("http: {} event stream {} after {} chunk(s), {:.1f} s", peer_, how, stream_chunks_,
               s);
}

void Session::close_now() {
  if (state_ == State::closed) return;
  if (state_ == State::streaming) log_stream_end("closed (client left or write failed)");
  enter(State::closed);  // legal from every other state
  subscription_.reset();
  keepalive_timer_.cancel();
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
  stream_.socket().close(ec);
}

}  // namespace diffusiond::http_api
