#include "http/sse.h"

#include "http/json_views.h"

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

SseEvent queued_event(const std::string& job) {
  return {"queued", {{"job", job}, {"status", "queued"}}};
}
SseEvent started_event(const std::string& job, int k, const std::string& device) {
  return {"started", {{"job", job}, {"image", k}, {"device", device}}};
}
SseEvent progress_event(const std::string& job, int k, int step, int steps) {
  return {"progress", {{"job", job}, {"image", k}, {"step", step}, {"steps", steps}}};
}
SseEvent image_done_event(const std::string& job, int k) {
  return {"image",
          {{"job", job},
           {"image", k},
           {"status", "done"},
           {"url", image_url(job, k)},
           {"error", nullptr}}};
}
SseEvent image_failed_event(const std::string& job, int k, const std::string& error) {
  return {"image",
          {{"job", job}, {"image", k}, {"status", "failed"}, {"url", nullptr}, {"error", error}}};
}
SseEvent terminal_event(const std::string& job, JobStatus status, const std::string& error) {
  json data = {{"job", job}, {"status", to_string(status)}};
  if (status == JobStatus::failed) data["error"] = error;
  return {to_string(status), std::move(data)};
}

}  // namespace

std::string format_sse(const SseEvent& event, std::uint64_t id) {
  // dump() never emits a raw newline, so one data line carries the whole JSON.
  return "id: " + std::to_string(id) + "\nevent: " + event.name +
         "\ndata: " + event.data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

std::string sse_comment(std::string_view text) {
  return ": " + std::string(text) + "\n\n";
}

bool is_terminal_event(const SseEvent& e) {
  return e.name == "done" || e.name == "failed" || e.name == "cancelled";
}

EventStreamState::EventStreamState(const JobView& snapshot) : job_id_(snapshot.id) {
  images_.resize(snapshot.images.size());
  catch_up_.push_back(queued_event(job_id_));
  for (const ImageView& img : snapshot.images) {
    ImageState& st = image(img.index);
    const bool began = img.status != ImageStatus::queued && !img.device.empty();
    if (began) {
      st.started = true;
      catch_up_.push_back(started_event(job_id_, img.index, img.device));
      for (int s = 1; s <= img.step; ++s) {
        catch_up_.push_back(progress_event(job_id_, img.index, s, img.steps));
      }
      st.step = img.step;
    }
    if (img.status == ImageStatus::done && img.has_file) {
      st.finished = true;
      catch_up_.push_back(image_done_event(job_id_, img.index));
    } else if (img.status == ImageStatus::failed) {
      st.finished = true;
      catch_up_.push_back(image_failed_event(job_id_, img.index, img.error));
    }
  }
  if (is_terminal(snapshot.status)) {
    catch_up_.push_back(terminal_event(job_id_, snapshot.status, snapshot.error));
    finished_ = true;
  }
}

EventStreamState::ImageState& EventStreamState::image(int k) {
  if (k < 0) k = 0;
  if (static_cast<std::size_t>(k) >= images_.size()) images_.resize(k + 1);
  return images_[k];
}

void EventStreamState::add_terminal_from(const JobView& view, std::vector<SseEvent>& out) {
  // The store may be ahead of the events delivered so far: report finished images first.
  for (const ImageView& img : view.images) {
    ImageState& st = image(img.index);
    if (st.finished) continue;
    if (img.status == ImageStatus::done && img.has_file) {
      st.finished = true;
      out.push_back(image_done_event(job_id_, img.index));
    } else if (img.status == ImageStatus::failed) {
      st.finished = true;
      out.push_back(image_failed_event(job_id_, img.index, img.error));
    }
  }
  out.push_back(terminal_event(job_id_, view.status, view.error));
  finished_ = true;
}

std::vector<SseEvent> EventStreamState::on_live(
    const JobEvent& e, const std::function<std::optional<JobView>()>& current) {
  std::vector<SseEvent> out;
  if (finished_) return out;
  switch (e.kind) {
    case JobEvent::Kind::queued:
      break;  // the catch-up always starts with queued
    case JobEvent::Kind::started: {
      ImageState& st = image(e.image);
      if (st.started) break;
      st.started = true;
      out.push_back(started_event(job_id_, e.image, e.device));
      break;
    }
    case JobEvent::Kind::progress: {
      ImageState& st = image(e.image);
      if (e.step <= st.step) break;
      st.step = e.step;
      out.push_back(progress_event(job_id_, e.image, e.step, e.steps));
      break;
    }
    case JobEvent::Kind::image: {
      ImageState& st = image(e.image);
      if (st.finished) break;
      st.finished = true;
      out.push_back(image_done_event(job_id_, e.image));
      break;
    }
    case JobEvent::Kind::failed: {
      if (e.image < 0) {
        out.push_back(terminal_event(job_id_, JobStatus::failed, e.error));
        finished_ = true;
        break;
      }
      ImageState& st = image(e.image);
      if (!st.finished) {
        st.finished = true;
        out.push_back(image_failed_event(job_id_, e.image, e.error));
      }
      // One image failing may or may not end the job; the store knows.
      if (std::optional<JobView> view = current(); view && is_terminal(view->status)) {
        add_terminal_from(*view, out);
      }
      break;
    }
    case JobEvent::Kind::done:
      out.push_back(terminal_event(job_id_, JobStatus::done, ""));
      finished_ = true;
      break;
    case JobEvent::Kind::cancelled:
      out.push_back(terminal_event(job_id_, JobStatus::cancelled, ""));
      finished_ = true;
      break;
  }
  return out;
}

}  // namespace diffusiond::http_api
