// GET /jobs/{id}/images/{k}.png: the PNG file, immutable, with an ETag.
#include <boost/beast/core/file.hpp>

#include "http/handlers.h"
#include "http/json_views.h"

namespace diffusiond::http_api {
namespace {

// Image k of a job never changes once written, so the job id and index identify its bytes.
std::string etag_for(const std::string& job_id, int k) {
  return "\"" + job_id + "-" + std::to_string(k) + "\"";
}

bool etag_matches(std::string_view if_none_match, const std::string& etag) {
  if (if_none_match.empty()) return false;
  if (if_none_match.find('*') != std::string_view::npos) return true;
  // A list of entity tags, possibly weak (W/"...").
  return if_none_match.find(etag) != std::string_view::npos;
}

// Images never change. Under an API key they are nobody else's: no shared cache may keep them
// (RFC 9111 3.5: a response to an authorized request is not stored by shared caches unless it
// says public).
template <class Message>
void set_cache_headers(Message& m, const std::string& etag, bool keyed) {
  m.set(http::field::etag, etag);
  m.set(http::field::cache_control,
        keyed ? "private, max-age=31536000, immutable" : "public, max-age=31536000, immutable");
}

}  // namespace

Response image_file_response(ServerContext& c, std::string_view if_none_match,
                             const std::string& job_id, int k) {
  std::optional<std::string> path = c.service.image_path(job_id, k);
  if (!path) {
    std::optional<JobView> job = c.service.job(job_id);
    if (!job) {
      return error_response(http::status::not_found, "job_not_found", "no job '" + job_id + "'");
    }
    if (k >= static_cast<int>(job->images.size())) {
      return error_response(http::status::not_found, "image_not_found",
                            "job '" + job_id + "' has " + std::to_string(job->images.size()) +
                                " image(s); there is no image " + std::to_string(k));
    }
    return error_response(http::status::not_found, "image_not_ready",
                          "image " + std::to_string(k) + " of job '" + job_id + "' is " +
                              to_string(job->images[k].status) + " and has no file yet");
  }
  const std::string etag = etag_for(job_id, k);
  if (etag_matches(if_none_match, etag)) {
    StringResponse res{http::status::not_modified, 11};
    set_cache_headers(res, etag, !c.options.api_keys.empty());
    return res;
  }
  http::file_body::value_type file;
  boost::beast::error_code ec;
  file.open(path->c_str(), boost::beast::file_mode::scan, ec);
  if (ec) {
    return error_response(http::status::not_found, "image_not_found",
                          "image " + std::to_string(k) + " of job '" + job_id +
                              "' cannot be read (" + ec.message() + "); it may have been removed");
  }
  FileResponse res{http::status::ok, 11};
  res.set(http::field::content_type, "image/png");
  res.set(http::field::content_disposition,
          "inline; filename=\"" + job_id + "-" + std::to_string(k) + ".png\"");
  res.set("X-Job-Id", job_id);
  set_cache_headers(res, etag, !c.options.api_keys.empty());
  res.body() = std::move(file);
  return res;
}

void handle_job_image(ServerContext& c, Exchange& ex, const RouteParams& p) {
  if (p.image_format == ImageFormat::png) {
    ex.respond(image_file_response(c, ex.request()[http::field::if_none_match], p.job_id, p.image));
    return;
  }
  // .jpg / .webp: made from the PNG on request, ?quality=1..100 (default 90).
  int quality = 90;
  if (auto it = p.query.find("quality"); it != p.query.end()) {
    try {
      quality = std::stoi(it->second);
    } catch (const std::exception&) {
      quality = 0;
    }
    if (quality < 1 || quality > 100) {
      ex.respond(error_response(http::status::bad_request, "invalid_field",
                                "query 'quality' must be an integer 1..100", "quality"));
      return;
    }
  }
  const auto encoded = c.service.encoded_image(p.job_id, p.image, p.image_format, quality);
  if (!encoded) {  // the PNG route's answer says why (no job, no such image, not ready)
    ex.respond(image_file_response(c, "", p.job_id, p.image));
    return;
  }
  const std::string etag = "\"" + p.job_id + "-" + std::to_string(p.image) + "-" +
                           to_string(p.image_format) + "-" + std::to_string(quality) + "\"";
  if (etag_matches(ex.request()[http::field::if_none_match], etag)) {
    StringResponse res{http::status::not_modified, 11};
    set_cache_headers(res, etag, !c.options.api_keys.empty());
    ex.respond(std::move(res));
    return;
  }
  StringResponse res{http::status::ok, 11};
  res.set(http::field::content_type, content_type_of(p.image_format));
  res.set("X-Job-Id", p.job_id);
  set_cache_headers(res, etag, !c.options.api_keys.empty());
  res.body() = encoded->bytes;
  ex.respond(std::move(res));
}

}  // namespace diffusiond::http_api
