// The core's event constructor, shared by its .cpp files (core_service.cpp, core_tasks.cpp).
#pragma once

#include <string>

#include "daemon/api/views.h"

namespace diffusiond {

inline JobEvent make_event(JobEvent::Kind kind, const std::string& job_id, int image = -1) {
  JobEvent e;
  e.kind = kind;
  e.job_id = job_id;
  e.image = image;
  return e;
}

}  // namespace diffusiond
