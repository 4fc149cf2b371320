// The job model: request expansion, the checked state machines, job status aggregation, ids.
#include <catch2/catch.hpp>

#include <set>

#include "daemon/api/json/request_json.h"
#include "daemon/job.h"

using namespace diffusiond;

namespace {
const std::vector<JobStatus> kAll = {JobStatus::queued, JobStatus::running, JobStatus::done,
                                     JobStatus::failed, JobStatus::cancelled};

JobRequest two_prompts_times_three() {
  JobRequest r;
  r.prompts = {"a cat", "a dog"};
  r.n = 3;
  r.steps = 4;
  r.seed = 100;
  r.width = 64;
  r.height = 32;
  r.scheduler = "euler";
  return r;
}
}  // namespace

TEST_CASE("a request becomes prompts x n images, prompt-major, image k with seed + k", "[job]") {
  const auto job = make_job(two_prompts_times_three(), "0123456789abcdef", 5, "m");
  REQUIRE(job.view.images.size() == 6);
  for (int k = 0; k < 6; ++k) {
    const auto& image = job.view.images[static_cast<std::size_t>(k)];
    CHECK(image.index == k);
    CHECK(image.seed == 100u + static_cast<unsigned>(k));
    CHECK(image.prompt == (k < 3 ? "a cat" : "a dog"));
    CHECK(image.status == ImageStatus::queued);
    CHECK(image.steps == 4);
  }
  CHECK(job.view.status == JobStatus::queued);
  CHECK(job.view.created_ms == 5);
  CHECK(job.attempts == std::vector<int>(6, 0));
}

TEST_CASE("seeds wrap around at 2^64 like unsigned arithmetic", "[job]") {
  auto request = two_prompts_times_three();
  request.seed = ~std::uint64_t{0};
  const auto job = make_job(request, "0123456789abcdef", 0, "m");
  CHECK(job.view.images[0].seed == ~std::uint64_t{0});
  CHECK(job.view.images[1].seed == 0u);
}

TEST_CASE("a request without prompts or with n < 1 is refused", "[job]") {
  JobRequest r;
  CHECK_THROWS_AS(make_job(r, "x", 0, "m"), std::invalid_argument);
  r.prompts = {"p"};
  r.n = 0;
  CHECK_THROWS_AS(make_job(r, "x", 0, "m"), std::invalid_argument);
}

TEST_CASE("job transitions: exactly the legal ones are accepted", "[job][state]") {
  const std::set<std::pair<JobStatus, JobStatus>> legal = {
      {JobStatus::queued, JobStatus::running},
      {JobStatus::queued, JobStatus::cancelled},
      {JobStatus::running, JobStatus::done},
      {JobStatus::running, JobStatus::failed},
      {JobStatus::running, JobStatus::cancelled}};
  for (auto from : kAll)
    for (auto to : kAll) {
      INFO(to_string(from) << " -> " << to_string(to));
      const bool expected = legal.count({from, to}) > 0;
      CHECK(is_legal_job_transition(from, to) == expected);
      if (expected)
        CHECK_NOTHROW(check_job_transition(from, to, "j"));
      else
        CHECK_THROWS_AS(check_job_transition(from, to, "j"), IllegalTransition);
    }
}

TEST_CASE("image transitions also allow running -> queued (re-queue)", "[job][state]") {
  CHECK(is_legal_image_transition(ImageStatus::running, ImageStatus::queued));
  CHECK_FALSE(is_legal_job_transition(JobStatus::running, JobStatus::queued));
  CHECK_FALSE(is_legal_image_transition(ImageStatus::done, ImageStatus::queued));
  CHECK_FALSE(is_legal_image_transition(ImageStatus::queued, ImageStatus::done));
  CHECK_FALSE(is_legal_image_transition(ImageStatus::queued, ImageStatus::failed));
  CHECK_FALSE(is_legal_image_transition(ImageStatus::cancelled, ImageStatus::running));
}

TEST_CASE("an illegal transition names the job and both states", "[job][state]") {
  try {
    check_job_transition(JobStatus::done, JobStatus::running, "abc");
    FAIL("no exception");
  } catch (const IllegalTransition& e) {
    CHECK(std::string(e.what()) == "illegal job transition for abc: done -> running");
  }
}

TEST_CASE("the job follows its images", "[job][state]") {
  auto job = make_job(two_prompts_times_three(), "0123456789abcdef", 0, "m");
  CHECK(set_image_status(job, 0, ImageStatus::running));  // first start: queued -> running
  CHECK(job.view.status == JobStatus::running);
  CHECK_FALSE(set_image_status(job, 0, ImageStatus::queued));  // re-queued: job stays running
  CHECK(job.view.status == JobStatus::running);
  for (int k = 0; k < 6; ++k) {
    set_image_status(job, k, ImageStatus::running);
    set_image_status(job, k, ImageStatus::done);
  }
  CHECK(job.view.status == JobStatus::done);
  CHECK_THROWS_AS(set_image_status(job, 0, ImageStatus::running), IllegalTransition);
  CHECK_THROWS_AS(set_image_status(job, 9, ImageStatus::running), std::out_of_range);
}

TEST_CASE("a job with a failed image fails once every image ended", "[job][state]") {
  auto job = make_job(two_prompts_times_three(), "0123456789abcdef", 0, "m");
  set_image_status(job, 0, ImageStatus::running);
  set_image_status(job, 0, ImageStatus::failed);
  CHECK(job.view.status == JobStatus::running);  // the others keep going
  for (int k = 1; k < 6; ++k) {
    set_image_status(job, k, ImageStatus::running);
    set_image_status(job, k, ImageStatus::done);
  }
  CHECK(job.view.status == JobStatus::failed);
}

TEST_CASE("cancel: queued images are cancelled, the job at once", "[job][state]") {
  auto job = make_job(two_prompts_times_three(), "0123456789abcdef", 0, "m");
  set_image_status(job, 0, ImageStatus::running);
  set_image_status(job, 0, ImageStatus::done);
  set_image_status(job, 1, ImageStatus::running);
  const auto was_queued = cancel_job(job);
  CHECK(was_queued == std::vector<int>{2, 3, 4, 5});
  CHECK(job.view.status == JobStatus::cancelled);
  CHECK(job.cancel_requested);
  CHECK(job.view.images[0].status == ImageStatus::done);
  CHECK(job.view.images[1].status == ImageStatus::running);  // stops at its next step
  set_image_status(job, 1, ImageStatus::cancelled);
  CHECK(job.view.status == JobStatus::cancelled);
  CHECK_THROWS_AS(cancel_job(job), IllegalTransition);  // cancelled is final
}

TEST_CASE("a queued job cancels straight to cancelled", "[job][state]") {
  auto job = make_job(two_prompts_times_three(), "0123456789abcdef", 0, "m");
  cancel_job(job);
  CHECK(job.view.status == JobStatus::cancelled);
  for (const auto& image : job.view.images) CHECK(image.status == ImageStatus::cancelled);
}

TEST_CASE("next_job_status aggregates", "[job][state]") {
  std::vector<ImageView> images(2);
  images[0].status = ImageStatus::done;
  images[1].status = ImageStatus::cancelled;
  CHECK(next_job_status(JobStatus::running, images) == JobStatus::cancelled);
  images[1].status = ImageStatus::failed;
  CHECK(next_job_status(JobStatus::running, images) == JobStatus::failed);
  images[1].status = ImageStatus::queued;
  CHECK(next_job_status(JobStatus::queued, images) == JobStatus::running);
  CHECK(next_job_status(JobStatus::done, images) == JobStatus::done);  // terminal stays
}

TEST_CASE("job ids are 16 hex characters and do not repeat", "[job]") {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    const auto id = make_job_id();
    CHECK(is_valid_job_id(id));
    ids.insert(id);
  }
  CHECK(ids.size() == 1000);
  CHECK_FALSE(is_valid_job_id("0123456789ABCDEF"));
  CHECK_FALSE(is_valid_job_id("../etc/passwd0000"));
  CHECK_FALSE(is_valid_job_id("0123"));
}

TEST_CASE("requests survive a JSON round trip, and bad stored JSON is named", "[job]") {
  auto request = two_prompts_times_three();
  request.seed = 18446744073709551615ull;
  request.negative_prompt = "blurry \"quoted\" ünïcode";
  request.priority = -3;
  request.guidance_scale = 6.25;
  const auto back = request_from_json(nlohmann::json::parse(request_to_json(request).dump()));
  CHECK(back.prompts == request.prompts);
  CHECK(back.negative_prompt == request.negative_prompt);
  CHECK(back.n == 3);
  CHECK(back.steps == 4);
  CHECK(back.seed == request.seed);
  CHECK(back.guidance_scale == 6.25);
  CHECK(back.width == 64);
  CHECK(back.height == 32);
  CHECK(back.scheduler == "euler");
  CHECK(back.priority == -3);
  auto json = request_to_json(request);
  json.erase("steps");
  CHECK_THROWS_WITH(request_from_json(json), Catch::Contains("'steps'"));
  json["steps"] = "many";
  CHECK_THROWS_WITH(request_from_json(json), Catch::Contains("mistyped 'steps'"));
}

TEST_CASE("absent vs empty negative prompt and SDXL micro-conditioning survive the round trip",
          "[job][sdxl]") {
  auto request = two_prompts_times_three();
  request.negative_prompt.reset();
  auto back = request_from_json(nlohmann::json::parse(request_to_json(request).dump()));
  CHECK_FALSE(back.negative_prompt.has_value());
  CHECK(request_to_json(request)["negative_prompt"].is_null());
  CHECK_FALSE(request_to_json(request).contains("original_size"));  // not an SDXL request
  request.negative_prompt = "";
  request.original_size = std::array<int, 2>{1024, 2048};
  request.crops_coords_top_left = std::array<int, 2>{0, 16};
  request.target_size = std::array<int, 2>{32, 64};
  back = request_from_json(nlohmann::json::parse(request_to_json(request).dump()));
  REQUIRE(back.negative_prompt.has_value());
  CHECK(back.negative_prompt->empty());
  CHECK(back.original_size == request.original_size);
  CHECK(back.crops_coords_top_left == request.crops_coords_top_left);
  CHECK(back.target_size == request.target_size);
  // Image specs carry them to the pipeline and the PNG.
  const ImageSpec spec = image_spec(request, 4);
  CHECK(spec.original_size == request.original_size);
  CHECK(spec.target_size == request.target_size);
  // A row stored before the distinction (negative_prompt a string) still reads.
  auto old = request_to_json(request);
  old["negative_prompt"] = "fog";
  old.erase("original_size");
  CHECK(request_from_json(old).negative_prompt == std::optional<std::string>("fog"));
  CHECK_FALSE(request_from_json(old).original_size.has_value());
}

TEST_CASE("SDXL negative micro-conditioning survives the round trip and reaches each image",
          "[job][sdxl]") {
  auto request = two_prompts_times_three();
  request.original_size = std::array<int, 2>{64, 64};
  CHECK_FALSE(request_to_json(request).contains("negative_original_size"));  // not given
  request.negative_original_size = std::array<int, 2>{512, 384};
  request.negative_crops_coords_top_left = std::array<int, 2>{0, 24};
  request.negative_target_size = std::array<int, 2>{32, 48};
  const auto json = request_to_json(request);
  CHECK(json["negative_original_size"] == nlohmann::json::array({512, 384}));
  CHECK(json["negative_crops_coords_top_left"] == nlohmann::json::array({0, 24}));
  CHECK(json["negative_target_size"] == nlohmann::json::array({32, 48}));
  const auto back = request_from_json(nlohmann::json::parse(json.dump()));
  CHECK(back.negative_original_size == request.negative_original_size);
  CHECK(back.negative_crops_coords_top_left == request.negative_crops_coords_top_left);
  CHECK(back.negative_target_size == request.negative_target_size);
  const ImageSpec spec = image_spec(request, 5);
  CHECK(spec.negative_original_size == request.negative_original_size);
  CHECK(spec.negative_crops_coords_top_left == request.negative_crops_coords_top_left);
  CHECK(spec.negative_target_size == request.negative_target_size);
  // Rows stored before these fields read as "not given".
  auto old = json;
  for (const char* f :
       {"negative_original_size", "negative_crops_coords_top_left", "negative_target_size"})
    old.erase(f);
  CHECK_FALSE(request_from_json(old).negative_original_size.has_value());
}

TEST_CASE("model, loras and prompt_syntax survive the round trip and reach each image", "[job]") {
  auto request = two_prompts_times_three();
  CHECK_FALSE(request_to_json(request).contains("model"));  // old rows read the same
  CHECK_FALSE(request_to_json(request).contains("loras"));
  CHECK_FALSE(request_to_json(request).contains("prompt_syntax"));
  request.model = "anything-v5";
  request.loras = {{"style", 0.8}, {"detail", -0.25}};
  request.prompt_syntax = PromptSyntax::a1111;
  const auto back = request_from_json(nlohmann::json::parse(request_to_json(request).dump()));
  CHECK(back.model == "anything-v5");
  CHECK(back.loras == request.loras);
  CHECK(back.prompt_syntax == PromptSyntax::a1111);
  const ImageSpec spec = image_spec(back, 5);
  CHECK(spec.model == "anything-v5");
  CHECK(spec.loras == request.loras);
  CHECK(spec.prompt_syntax == PromptSyntax::a1111);
  auto json = request_to_json(request);
  json["prompt_syntax"] = "comfy";
  CHECK_THROWS_WITH(request_from_json(json), Catch::Contains("prompt_syntax"));
}
