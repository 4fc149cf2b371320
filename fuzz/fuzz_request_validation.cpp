// Fuzz target: a POST /generate body. http/request_validation's shape checks, then the core's
// normalise() (daemon/api/request.h) with a model's defaults, then the normalised request's one
// JSON shape (daemon/api/json) written and read back.
// A ValidationError or a ServiceError is the expected answer to bad input; any other exception,
// a crash, or a round trip that changes the request is a bug (abort).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/api/errors.h"
#include "daemon/api/json/request_json.h"
#include "daemon/api/request.h"
#include "http/request_validation.h"

namespace {

std::optional<std::string> resolve(const std::string& name) {
  for (const char* known : {"pndm", "euler_a", "ddim"}) {
    if (name == known) return std::string(known);
  }
  if (name == "Euler a") return std::string("euler_a");
  return std::nullopt;
}

bool same(const diffusiond::JobRequest& a, const diffusiond::JobRequest& b) {
  return a.prompts == b.prompts && a.negative_prompt == b.negative_prompt && a.n == b.n &&
         a.steps == b.steps && a.guidance_scale == b.guidance_scale && a.seed == b.seed &&
         a.width == b.width && a.height == b.height && a.scheduler == b.scheduler &&
         a.priority == b.priority;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace diffusiond;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  auto parsed = http_api::parse_generate_request(body);
  if (std::holds_alternative<http_api::ValidationError>(parsed)) {
    const auto& error = std::get<http_api::ValidationError>(parsed);
    if (error.http_status != 400 || error.code.empty() || error.message.empty()) std::abort();
    return 0;
  }
  RequestDefaults defaults;
  defaults.width = 64;
  defaults.height = 64;
  defaults.steps = 3;
  defaults.scheduler = "pndm";
  JobRequest request;
  try {
    request = normalise(std::get<GenerateRequest>(parsed), defaults, resolve, RequestLimits{},
                        /*random_seed=*/12345, "pndm, euler_a, ddim");
  } catch (const ServiceError& e) {
    if (e.code() != ErrorCode::invalid_request) std::abort();
    return 0;
  }
  // What the store and the PNG metadata keep must read back as the same request.
  const auto text = request_to_json(request).dump();  // as the job store writes it (strict)
  if (!same(request_from_json(nlohmann::json::parse(text)), request)) std::abort();
  for (int k = 0; k < image_count(request); ++k) (void)image_spec(request, k);
  return 0;
}
