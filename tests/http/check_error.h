// The API's error answer, checked the same way by every HTTP test: the status, a JSON body
// {"error":{"code","message"}} with the expected code and a message.
#pragma once

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/http_client.h"

namespace diffusiond::testing {

inline void check_error(const HttpReply& r, unsigned status, const std::string& code) {
  INFO(r.body);
  CHECK(r.status == status);
  CHECK(r.header("content-type") == "application/json");
  const nlohmann::json j = r.json();
  REQUIRE(j.contains("error"));
  CHECK(j["error"]["code"] == code);
  CHECK(j["error"]["message"].is_string());
  CHECK_FALSE(j["error"]["message"].get<std::string>().empty());
}

}  // namespace diffusiond::testing
