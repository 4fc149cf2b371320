// How the core says no: an error code (what kind of failure, for every front end), an optional
// reason (the precise machine-readable name, e.g. "unknown_scheduler", "draining"), the request
// field at fault and a retry hint. Only http/ turns codes into HTTP statuses
// (http/http_types.h: http_status_of). Part of diffusiond_api (no dependencies).
// Value type; any thread.
#pragma once

#include <stdexcept>
#include <string>

namespace diffusiond {

enum class ErrorCode {
  invalid_request,  // the request is wrong; the message names the field
  not_found,        // no such job or image
  conflict,         // the request contradicts the state (e.g. cancelling a finished job)
  forbidden,        // the caller may not do this (e.g. a priority above 0 without the right)
  queue_full,       // try again later: retry_after_s says when
  unavailable,      // the service cannot take work now (draining, no device, store down)
  storage_full,     // the data dir is full: nothing new is accepted until space is freed
  internal,         // a bug or an unexpected failure
};
const char* to_string(ErrorCode code);  // "invalid_request", ...

class ServiceError : public std::runtime_error {
 public:
  ServiceError(ErrorCode code, const std::string& message, std::string reason = {},
               std::string field = {}, int retry_after_s = 0)
      : std::runtime_error(message),
        code_(code),
        reason_(std::move(reason)),
        field_(std::move(field)),
        retry_after_s_(retry_after_s) {}
  ErrorCode code() const { return code_; }
  // The API's error code string: the reason when given, else the code's name.
  std::string reason() const { return reason_.empty() ? to_string(code_) : reason_; }
  const std::string& field() const { return field_; }   // empty when about the whole request
  int retry_after_s() const { return retry_after_s_; }  // 0 = no hint

 private:
  ErrorCode code_;
  std::string reason_;
  std::string field_;
  int retry_after_s_;
};

}  // namespace diffusiond
