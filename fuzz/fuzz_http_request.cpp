// Fuzz target: raw bytes as what a client sends on one connection. The bytes are read as
// Session (http/session.cpp) reads them: Beast's request parser with the server's limits and
// the same decisions (http/request_framing.h: a failed header or body read, the framing and
// Content-Length checks), one request after another while the answers keep the connection
// alive; each complete request goes through route_request() with the HTTP tests' fake
// ImageService (tests/http/fake_service.h). After each request every job it submitted is run
// to completion, and what handlers posted (?wait=1 answers, event streams) is delivered.
// A bug (abort): an exception out of route_request, a 500, an answer that is not exactly one
// per request, or a request still unanswered once its jobs are done (a hang).
// When the input mentions "Authorization", the server has the API key "fuzz-key".
#include <spdlog/spdlog.h>

#include <unistd.h>
#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <string_view>

#include "http/admission.h"
#include "http/client_limits.h"
#include "http/exchange.h"
#include "http/request_framing.h"
#include "http/router.h"
#include "tests/http/fake_service.h"

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using namespace diffusiond;
using namespace diffusiond::http_api;

// A SyncReadStream over the input: reads of at most 512 bytes (the parser sees requests split
// across reads), then end of stream.
class BytesStream {
 public:
  explicit BytesStream(std::string_view bytes) : rest_(bytes) {}
  template <class Buffers>
  std::size_t read_some(const Buffers& buffers, boost::system::error_code& ec) {
    if (rest_.empty()) {
      ec = asio::error::eof;
      return 0;
    }
    ec = {};
    const std::size_t n = asio::buffer_copy(
        buffers, asio::buffer(rest_.data(), std::min<std::size_t>(rest_.size(), 512)));
    rest_.remove_prefix(n);
    return n;
  }
  template <class Buffers>
  std::size_t read_some(const Buffers& buffers) {
    boost::system::error_code ec;
    const std::size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

 private:
  std::string_view rest_;
};

// One request being answered, as Session answers it (http/exchange.h's rules): a poster's
// function runs later only while the same request is still open.
class FuzzExchange : public Exchange {
 public:
  explicit FuzzExchange(Request request) : request_(std::move(request)) {}
  const Request& request() const override { return request_; }
  void respond(Response response) override {
    if (!open()) return;
    answers_++;
    subscription_.reset();
    finalize(response, request_);
    status_ = status_code(response);
    keep_alive_ = std::visit([](const auto& m) { return m.keep_alive(); }, response);
  }
  void keep(std::unique_ptr<Subscription> subscription) override {
    subscription_ = std::move(subscription);
  }
  Poster poster() override {
    return [this](std::function<void(Exchange&)> fn) { posted_.push_back(std::move(fn)); };
  }
  void start_event_stream() override {
    if (!open()) return;
    answers_++;
    streaming_ = true;
    status_ = 200;
  }
  void send_event_data(std::string text) override {
    if (streaming_ && !stream_ended_ && text.empty()) std::abort();  // an empty chunk ends HTTP
  }
  void end_event_stream() override {
    if (!streaming_ || stream_ended_) return;
    stream_ended_ = true;
    subscription_.reset();
  }

  // Runs what was posted, as the connection's strand would (dropped once answered or ended).
  void drain() {
    while (!posted_.empty()) {
      auto fn = std::move(posted_.front());
      posted_.pop_front();
      if (open() || (streaming_ && !stream_ended_)) fn(*this);
    }
  }
  bool open() const { return answers_ == 0; }
  bool finished() const { return answers_ == 1 && (!streaming_ || stream_ended_); }
  unsigned status() const { return status_; }
  bool keep_alive() const { return keep_alive_ && !streaming_; }
  void drop_subscription() { subscription_.reset(); }

 private:
  Request request_;
  std::unique_ptr<Subscription> subscription_;
  std::deque<std::function<void(Exchange&)>> posted_;
  int answers_ = 0;
  unsigned status_ = 0;
  bool keep_alive_ = false;
  bool streaming_ = false;
  bool stream_ended_ = false;
};

// Where the fake service writes its PNGs: one folder per process, removed at exit (never
// destroyed before that: the exit handler still reads it).
const std::filesystem::path& image_dir() {
  static const std::filesystem::path* dir = [] {
    auto* d = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                        ("diffusiond-fuzz-http-" + std::to_string(::getpid())));
    std::filesystem::create_directories(*d);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(image_dir(), ignored);
    });
    return d;
  }();
  return *dir;
}

// The request's answer once every job submitted so far has run; false: stop reading.
bool answer(ServerContext& context, testing::FakeImageService& service, Request request,
            std::size_t& jobs_run) {
  FuzzExchange exchange(std::move(request));
  route_request(context, exchange);  // an exception out of here is a bug: it crashes the run
  exchange.drain();
  for (;;) {
    const auto submitted = service.submitted().size();
    if (jobs_run >= submitted) break;
    ++jobs_run;
    char id[32];
    std::snprintf(id, sizeof id, "%016zx", jobs_run);  // FakeImageService's ids, in order
    service.run_all(id);
    exchange.drain();
  }
  if (!exchange.finished()) std::abort();  // unanswered although its jobs are done: a hang
  if (exchange.status() >= 500) std::abort();
  exchange.drop_subscription();
  return exchange.keep_alive();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)quiet;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  HttpOptions options;
  options.max_body_bytes = 4096;  // small limits, so the fuzzer reaches them
  options.max_header_bytes = 2048;
  if (bytes.find("Authorization") != std::string_view::npos) options.api_keys = {"fuzz-key"};
  testing::FakeImageService service(image_dir());
  HttpStats stats;
  Admission admission(options);
  RateLimiter rate_limiter(options.rate_limit, options.rate_burst);
  A1111State a1111;
  ServerContext context{service, options, stats, admission, rate_limiter, a1111};

  BytesStream stream(bytes);
  boost::beast::flat_buffer buffer;
  std::size_t jobs_run = 0;
  for (int requests = 0; requests < 16; ++requests) {
    RequestParser parser;
    apply_limits(parser, options);
    boost::beast::error_code ec;
    http::read_header(stream, buffer, parser, ec);
    if (ec) {
      (void)header_read_failed(ec, options);  // refused or closed: the connection ends
      break;
    }
    if (check_request_header(parser, options)) break;  // refused: the connection ends
    http::read(stream, buffer, parser, ec);
    if (ec) {
      (void)body_read_failed(ec, body_limit_for(parser.get(), options));
      break;
    }
    if (!answer(context, service, parser.release(), jobs_run)) break;
  }
  return 0;
}
