#include "daemon/api/errors.h"

namespace diffusiond {

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_request:
      return "invalid_request";
    case ErrorCode::not_found:
      return "not_found";
    case ErrorCode::conflict:
      return "conflict";
    case ErrorCode::queue_full:
      return "queue_full";
    case ErrorCode::forbidden:
      return "forbidden";
    case ErrorCode::storage_full:
      return "storage_full";
    case ErrorCode::unavailable:
      return "unavailable";
    case ErrorCode::internal:
      return "internal";
  }
  return "internal";
}

}  // namespace diffusiond
