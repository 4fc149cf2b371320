// Server-Sent Events for GET /jobs/{id}/events: wire framing, and the merge of a catch-up
// (what already happened, rebuilt from a job snapshot) with live events, without duplicates.
// EventStreamState belongs to one event stream and is used only on that
// stream's strand; the free functions are pure.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/api/service.h"

namespace diffusiond::http_api {

struct SseEvent {
  std::string name;  // queued, started, progress, image, done, failed, cancelled
  nlohmann::json data;
};

// "id: <id>\nevent: <name>\ndata: <json>\n\n"
std::string format_sse(const SseEvent& event, std::uint64_t id);
// ": <text>\n\n" (ignored by clients; keeps proxies and the connection alive)
std::string sse_comment(std::string_view text);

bool is_terminal_event(const SseEvent& e);

class EventStreamState {
 public:
  // Call with the job snapshot read right after subscribing.
  explicit EventStreamState(const JobView& snapshot);

  // What already happened: queued, then per image started / progress 1..step / image, then the
  // terminal event if the job is finished.
  const std::vector<SseEvent>& catch_up() const { return catch_up_; }

  // Events to send for one live event (none when the catch-up already covered it).
  // `current` reads the job again; used when an image fails, to learn whether the job ended.
  std::vector<SseEvent> on_live(const JobEvent& e,
                                const std::function<std::optional<JobView>()>& current);

  // True once a terminal event was produced: the stream should end after sending it.
  bool finished() const { return finished_; }

 private:
  struct ImageState {
    bool started = false;
    int step = 0;
    bool finished = false;
  };
  ImageState& image(int k);
  void add_terminal_from(const JobView& view, std::vector<SseEvent>& out);

  std::string job_id_;
  std::vector<ImageState> images_;
  std::vector<SseEvent> catch_up_;
  bool finished_ = false;
};

}  // namespace diffusiond::http_api
