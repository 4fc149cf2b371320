#include "http/server.h"

#include <spdlog/spdlog.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <thread>

#include "http/listener.h"

namespace diffusiond {

using namespace http_api;
namespace asio = boost::asio;

class HttpServerImpl {
 public:
  HttpServerImpl(ImageService& service, HttpOptions options)
      : options_(std::move(options)),
        admission_(options_),
        rate_limiter_(options_.rate_limit, options_.rate_burst),
        context_{service, options_, stats_, admission_, rate_limiter_, a1111_} {}

  std::uint16_t start() {
    if (listener_) throw std::logic_error("HttpServer::start called twice");
    listener_ = std::make_shared<Listener>(ioc_, context_, registry_);
    const std::uint16_t port = listener_->bind(options_.host, options_.port);
    listener_->start();
    const int threads = std::max(1, options_.io_threads);
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { run_io(); });
    spdlog::info("http: listening on {}:{} ({} I/O threads{})", options_.host, port, threads,
                 options_.api_keys.empty() ? ", no API key" : ", API key required");
    return port;
  }

  void stop_accepting() {
    if (listener_) listener_->close();
  }

  void stop() {
    if (stopped_) return;
    stopped_ = true;
    stop_accepting();
    for (const auto& session : registry_.snapshot()) session->close();
    work_.reset();
    // Give the closes a moment to run, then stop whatever is left.
    for (int i = 0; i < 50 && stats_.connections_open() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ioc_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    // No I/O thread runs now: cut every subscription so no service callback can post into
    // the io_context after it is destroyed.
    for (const auto& session : registry_.snapshot()) session->drop_subscription_now();
  }

 private:
  void run_io() {
    for (;;) {
      try {
        ioc_.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("http: unexpected exception on an I/O thread: {}", e.what());
      }
    }
  }

  HttpOptions options_;
  HttpStats stats_;
  Admission admission_;
  RateLimiter rate_limiter_;
  A1111State a1111_;
  ServerContext context_;
  SessionRegistry registry_;
  asio::io_context ioc_;  // declared after what sessions refer to: destroyed first
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{
      asio::make_work_guard(ioc_)};
  std::shared_ptr<Listener> listener_;
  std::vector<std::thread> threads_;
  bool stopped_ = false;
};

HttpServer::HttpServer(ImageService& service, HttpOptions options)
    : impl_(std::make_unique<HttpServerImpl>(service, std::move(options))) {}

HttpServer::~HttpServer() {
  stop();
}

std::uint16_t HttpServer::start() {
  return impl_->start();
}
void HttpServer::stop_accepting() {
  impl_->stop_accepting();
}
void HttpServer::stop() {
  impl_->stop();
}

}  // namespace diffusiond
