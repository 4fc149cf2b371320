// The one job-id rule: 16 lowercase hex characters from a non-deterministic 64-bit source
// (URL-safe, unguessable enough to not be enumerable). The core makes them; the HTTP edge
// checks a path's id with the same function before asking the core.
// Part of diffusiond_api (no dependencies). Any thread.
#pragma once

#include <string>
#include <string_view>

namespace diffusiond {

std::string make_job_id();
bool is_valid_job_id(std::string_view id);

}  // namespace diffusiond
