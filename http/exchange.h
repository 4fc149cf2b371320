// What a route handler sees: the server's shared context and the request being answered.
// ServerContext is owned by HttpServerImpl (http/server.cpp); Exchange is implemented by Session
// (http/session.h), one per connection, which owns its state.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "daemon/api/service.h"
#include "http/a1111_state.h"
#include "http/admission.h"
#include "http/client_limits.h"
#include "http/http_stats.h"
#include "http/http_types.h"
#include "http/server.h"

namespace diffusiond::http_api {

// Shared by every connection of one HttpServer; outlives them all.
struct ServerContext {
  ImageService& service;
  const HttpOptions& options;
  HttpStats& stats;
  Admission& admission;
  RateLimiter& rate_limiter;
  A1111State& a1111;  // the A1111 dialect's per-caller options
};

// One request being answered. Unless said otherwise, methods must be called on the
// connection's strand (inside a handler, or inside a function given to a poster). A respond or
// event-stream call that comes when the request is no longer open for it (already answered,
// stream not started or already ended, connection closed) is dropped.
class Exchange {
 public:
  // Runs `fn` on the connection's strand later, but only while this same request is still
  // unanswered and the connection open; otherwise drops it. The poster may be called from any
  // thread (e.g. from an ImageService event callback).
  using Poster = std::function<void(std::function<void(Exchange&)>)>;

  virtual ~Exchange() = default;
  virtual const Request& request() const = 0;
  // Answers the request; exactly once (not after start_event_stream).
  virtual void respond(Response response) = 0;
  // Keeps an event subscription alive until the request is answered or its stream ends.
  virtual void keep(std::unique_ptr<Subscription> subscription) = 0;
  virtual Poster poster() = 0;

  // Server-Sent Events: sends the 200 text/event-stream header (the connection closes when the
  // stream ends), then raw event text, then ends the stream.
  virtual void start_event_stream() = 0;
  virtual void send_event_data(std::string text) = 0;
  virtual void end_event_stream() = 0;
};

}  // namespace diffusiond::http_api
