// POST /generate body validation (the HTTP edge's shapes, then the core's normalise()): every
// limit, wrong types, bad JSON, defaults.
#include <catch2/catch.hpp>

#include "daemon/api/views.h"
#include "http/http_types.h"
#include "http/request_validation.h"

using namespace diffusiond;
using namespace diffusiond::http_api;

namespace {

ModelInfo test_model() {
  ModelInfo m;
  m.name = "m";
  m.default_width = 512;
  m.default_height = 512;
  m.default_steps = 50;
  m.default_guidance_scale = 7.5;
  m.default_scheduler = "pndm";
  m.schedulers = {{"pndm", {"PNDM"}}, {"euler_a", {"Euler a"}}};
  return m;
}

std::optional<std::string> resolve(const std::string& name) {
  if (name == "pndm" || name == "PNDM") return "pndm";
  if (name == "euler_a" || name == "Euler a") return "euler_a";
  return std::nullopt;
}

// What POST /generate does with a body: the HTTP edge checks its shape, then the core's one
// normalisation (daemon/api/request.h) fills defaults and checks every limit. Its ServiceError
// is answered as http/ answers it (status and reason as code).
std::variant<JobRequest, ValidationError> parse(const std::string& body, RequestLimits limits = {},
                                                bool sdxl = false) {
  auto shaped = parse_generate_request(body);
  if (auto* e = std::get_if<ValidationError>(&shaped)) return *e;
  ModelInfo model = test_model();
  model.micro_conditioning = sdxl;
  try {
    return normalise(std::get<GenerateRequest>(shaped), request_defaults(model), resolve, limits,
                     4242, scheduler_names(test_model()));
  } catch (const ServiceError& e) {
    return ValidationError{static_cast<int>(http_status_of(e.code())), e.reason(), e.field(),
                           e.what()};
  }
}

JobRequest ok(const std::string& body, bool sdxl = false) {
  auto r = parse(body, {}, sdxl);
  if (auto* e = std::get_if<ValidationError>(&r)) FAIL("unexpected error: " << e->message);
  return std::get<JobRequest>(r);
}

ValidationError bad(const std::string& body, RequestLimits limits = {}, bool sdxl = false) {
  auto r = parse(body, limits, sdxl);
  if (std::holds_alternative<JobRequest>(r)) FAIL("accepted: " << body);
  return std::get<ValidationError>(r);
}

// The error names the field, both in `field` and in the message.
void expect_field(const std::string& body, const std::string& field,
                  const std::string& code = "invalid_field", bool sdxl = false) {
  INFO(body);
  ValidationError e = bad(body, {}, sdxl);
  CHECK(e.http_status == 400);
  CHECK(e.code == code);
  CHECK(e.field == field);
  CHECK(e.message.find(field) != std::string::npos);
}

}  // namespace

TEST_CASE("a minimal request gets the model's defaults", "[http][validation]") {
  JobRequest r = ok(R"({"prompt":"a dog"})");
  CHECK(r.prompts == std::vector<std::string>{"a dog"});
  CHECK(r.n == 1);
  CHECK(r.steps == 50);
  CHECK(r.width == 512);
  CHECK(r.height == 512);
  CHECK(r.guidance_scale == 7.5);
  CHECK(r.scheduler == "pndm");
  CHECK(r.seed == 4242);  // the random seed handed in
  CHECK(r.priority == 0);
  CHECK_FALSE(r.negative_prompt.has_value());  // absent, not ""
  CHECK_FALSE(r.original_size.has_value());    // not an SDXL model
}

TEST_CASE("every field is read", "[http][validation]") {
  JobRequest r = ok(R"({"prompts":["a","b"],"negative_prompt":"blurry","n":3,"steps":20,
      "guidance_scale":4,"seed":123,"width":640,"height":384,"scheduler":"Euler a","priority":-5})");
  CHECK(r.prompts == std::vector<std::string>{"a", "b"});
  CHECK(r.negative_prompt == "blurry");
  CHECK(r.n == 3);
  CHECK(r.steps == 20);
  CHECK(r.guidance_scale == 4.0);
  CHECK(r.seed == 123);
  CHECK(r.width == 640);
  CHECK(r.height == 384);
  CHECK(r.scheduler == "euler_a");  // alias -> canonical
  CHECK(r.priority == -5);
}

TEST_CASE("seed: -1 and null mean random, large seeds are kept exactly", "[http][validation]") {
  CHECK(ok(R"({"prompt":"x","seed":-1})").seed == 4242);
  CHECK(ok(R"({"prompt":"x","seed":null})").seed == 4242);
  CHECK(ok(R"({"prompt":"x","seed":0})").seed == 0);
  CHECK(ok(R"({"prompt":"x","seed":18446744073709551615})").seed == 18446744073709551615ull);
  expect_field(R"({"prompt":"x","seed":-2})", "seed");
  expect_field(R"({"prompt":"x","seed":1.5})", "seed");
  expect_field(R"({"prompt":"x","seed":"7"})", "seed");
  // seed + image index must not wrap around
  expect_field(R"({"prompt":"x","n":2,"seed":18446744073709551615})", "seed");
}

TEST_CASE("null is the same as an absent optional field", "[http][validation]") {
  JobRequest r = ok(R"({"prompt":"x","n":null,"steps":null,"width":null,"scheduler":null,
      "negative_prompt":null,"guidance_scale":null,"priority":null,"height":null,"prompts":null})");
  CHECK(r.n == 1);
  CHECK(r.steps == 50);
  CHECK(r.width == 512);
  CHECK(r.scheduler == "pndm");
}

TEST_CASE("width and height: multiples of 8, within bounds and the pixel limit",
          "[http][validation]") {
  expect_field(R"({"prompt":"x","width":100})", "width");
  expect_field(R"({"prompt":"x","height":100})", "height");
  expect_field(R"({"prompt":"x","width":56})", "width");  // below 64
  expect_field(R"({"prompt":"x","width":0})", "width");
  expect_field(R"({"prompt":"x","width":-64})", "width");
  expect_field(R"({"prompt":"x","width":4104})", "width");  // above max_side
  // 1024 x 1032 is over the default 1024*1024 pixels
  expect_field(R"({"prompt":"x","width":1024,"height":1032})", "width");
  CHECK(ok(R"({"prompt":"x","width":1024,"height":1024})").width == 1024);
  CHECK(ok(R"({"prompt":"x","width":64,"height":64})").height == 64);
  expect_field(R"({"prompt":"x","width":64.0})", "width");
  expect_field(R"({"prompt":"x","width":"512"})", "width");
  RequestLimits small;
  small.max_pixels = 64 * 64;
  CHECK(bad(R"({"prompt":"x","width":64,"height":72})", small).field == "width");
  CHECK(bad(R"({"prompt":"x","height":72})", small).field == "height");  // 512 x 72
}

TEST_CASE("steps 1..max_steps", "[http][validation]") {
  expect_field(R"({"prompt":"x","steps":0})", "steps");
  expect_field(R"({"prompt":"x","steps":151})", "steps");
  expect_field(R"({"prompt":"x","steps":-3})", "steps");
  expect_field(R"({"prompt":"x","steps":"20"})", "steps");
  expect_field(R"({"prompt":"x","steps":true})", "steps");
  expect_field(R"({"prompt":"x","steps":99999999999999999999})", "steps");
  CHECK(ok(R"({"prompt":"x","steps":1})").steps == 1);
  CHECK(ok(R"({"prompt":"x","steps":150})").steps == 150);
}

TEST_CASE("n 1..max_n and the images-per-job bound", "[http][validation]") {
  expect_field(R"({"prompt":"x","n":0})", "n");
  expect_field(R"({"prompt":"x","n":17})", "n");
  expect_field(R"({"prompt":"x","n":99})", "n");
  expect_field(R"({"prompt":"x","n":[1]})", "n");
  CHECK(ok(R"({"prompt":"x","n":16})").n == 16);
  // 5 prompts x 16 = 80 > 64 images
  expect_field(R"({"prompts":["a","b","c","d","e"],"n":16})", "n");
  CHECK(ok(R"({"prompts":["a","b","c","d"],"n":16})").n == 16);
}

TEST_CASE("prompts: exactly one of prompt/prompts, strings, bounded count and length",
          "[http][validation]") {
  expect_field(R"({})", "prompt", "missing_field");
  expect_field(R"({"n":2})", "prompt", "missing_field");
  expect_field(R"({"prompt":"a","prompts":["b"]})", "prompts");
  expect_field(R"({"prompt":5})", "prompt");
  expect_field(R"({"prompt":["a"]})", "prompt");
  expect_field(R"({"prompts":"a"})", "prompts");
  expect_field(R"({"prompts":[]})", "prompts");
  expect_field(R"({"prompts":["a",3]})", "prompts[1]");
  std::string seventeen = R"({"prompts":[)";
  for (int i = 0; i < 17; ++i) seventeen += std::string(i ? "," : "") + "\"p\"";
  expect_field(seventeen + "]}", "prompts");

  const std::string long_ascii(2001, 'a');
  expect_field(R"({"prompt":")" + long_ascii + "\"}", "prompt");
  expect_field(R"({"prompt":"x","negative_prompt":")" + long_ascii + "\"}", "negative_prompt");
  expect_field(R"({"prompt":"x","negative_prompt":7})", "negative_prompt");
  // The bound counts characters, not bytes: 2000 three-byte characters are fine.
  std::string cjk;
  for (int i = 0; i < 2000; ++i) cjk += "\xe7\x8a\xac";  // U+72AC
  CHECK(ok(R"({"prompt":")" + cjk + "\"}").prompts[0].size() == 6000);
  CHECK(utf8_length(cjk) == 2000);
  CHECK(ok(R"({"prompt":""})").prompts[0].empty());
  // A NUL cannot reach the PNG's text chunks.
  expect_field(R"({"prompt":"a\u0000b"})", "prompt");
  expect_field(R"({"prompt":"x","negative_prompt":"\u0000"})", "negative_prompt");
}

TEST_CASE("guidance_scale: a number in [0, max]", "[http][validation]") {
  CHECK(ok(R"({"prompt":"x","guidance_scale":0})").guidance_scale == 0.0);
  CHECK(ok(R"({"prompt":"x","guidance_scale":12.5})").guidance_scale == 12.5);
  expect_field(R"({"prompt":"x","guidance_scale":-0.5})", "guidance_scale");
  expect_field(R"({"prompt":"x","guidance_scale":50.5})", "guidance_scale");
  expect_field(R"({"prompt":"x","guidance_scale":"7"})", "guidance_scale");
}

TEST_CASE("scheduler: names and aliases, unknown ones listed", "[http][validation]") {
  CHECK(ok(R"({"prompt":"x","scheduler":"PNDM"})").scheduler == "pndm");
  ValidationError e = bad(R"({"prompt":"x","scheduler":"lms_karras_turbo"})");
  CHECK(e.code == "unknown_scheduler");
  CHECK(e.field == "scheduler");
  CHECK(e.message.find("lms_karras_turbo") != std::string::npos);
  CHECK(e.message.find("euler_a") != std::string::npos);  // says what is known
  expect_field(R"({"prompt":"x","scheduler":3})", "scheduler");
}

TEST_CASE("priority within bounds", "[http][validation]") {
  CHECK(ok(R"({"prompt":"x","priority":1000})").priority == 1000);
  expect_field(R"({"prompt":"x","priority":1001})", "priority");
  expect_field(R"({"prompt":"x","priority":-1001})", "priority");
  expect_field(R"({"prompt":"x","priority":"high"})", "priority");
}

TEST_CASE("unknown fields are rejected by name", "[http][validation]") {
  ValidationError e = bad(R"({"prompt":"x","step":20,"cfg_scale":7})");
  CHECK(e.code == "unknown_field");
  CHECK(e.message.find("'step'") != std::string::npos);
  CHECK(e.message.find("'cfg_scale'") != std::string::npos);
  CHECK((e.field == "step" || e.field == "cfg_scale"));
}

TEST_CASE("malformed bodies", "[http][validation]") {
  for (const char* body : {"", "   ", "{", "{\"prompt\":}", "not json", "{\"prompt\":\"x\"}}",
                           "[\"a dog\"]", "\"a dog\"", "42", "null", "{\"prompt\":\"\xff\"}"}) {
    INFO(body);
    ValidationError e = bad(body);
    CHECK(e.http_status == 400);
    CHECK(e.code == "invalid_json");
    CHECK_FALSE(e.message.empty());
  }
}

TEST_CASE("negative_prompt: absent, null and \"\" are kept apart from each other",
          "[http][validation]") {
  CHECK_FALSE(ok(R"({"prompt":"x"})").negative_prompt.has_value());
  CHECK_FALSE(ok(R"({"prompt":"x","negative_prompt":null})").negative_prompt.has_value());
  auto empty = ok(R"({"prompt":"x","negative_prompt":""})").negative_prompt;
  REQUIRE(empty.has_value());
  CHECK(empty->empty());
}

TEST_CASE("SDXL micro-conditioning: defaults, shapes, ranges, refused for other models",
          "[http][validation][sdxl]") {
  JobRequest d = ok(R"({"prompt":"x","width":640,"height":384})", /*sdxl=*/true);
  CHECK(d.original_size == std::array<int, 2>{384, 640});  // (height, width)
  CHECK(d.crops_coords_top_left == std::array<int, 2>{0, 0});
  CHECK(d.target_size == std::array<int, 2>{384, 640});
  JobRequest r = ok(R"({"prompt":"x","original_size":[2048,1024],"crops_coords_top_left":[16,8],
      "target_size":[512,512]})",
                    true);
  CHECK(r.original_size == std::array<int, 2>{2048, 1024});
  CHECK(r.crops_coords_top_left == std::array<int, 2>{16, 8});
  CHECK(r.target_size == std::array<int, 2>{512, 512});

  for (const char* field : {"original_size", "crops_coords_top_left", "target_size"}) {
    const std::string f = field;
    expect_field(R"({"prompt":"x",")" + f + R"(":[1,2,3]})", f, "invalid_field", true);
    expect_field(R"({"prompt":"x",")" + f + R"(":[1,"2"]})", f, "invalid_field", true);
    expect_field(R"({"prompt":"x",")" + f + R"(":512})", f, "invalid_field", true);
    expect_field(R"({"prompt":"x",")" + f + R"(":[64,99999]})", f, "invalid_field", true);
    expect_field(R"({"prompt":"x",")" + f + R"(":[-1,64]})", f, "invalid_field", true);
    // An SD 1.x/2.x model does not take them.
    ValidationError e = bad(R"({"prompt":"x",")" + f + R"(":[64,64]})");
    CHECK(e.field == f);
    CHECK_THAT(e.message, Catch::Contains("SDXL models only"));
  }
  expect_field(R"({"prompt":"x","original_size":[0,64]})", "original_size", "invalid_field", true);
  CHECK(ok(R"({"prompt":"x","crops_coords_top_left":[0,0]})", true).crops_coords_top_left ==
        std::array<int, 2>{0, 0});
}

TEST_CASE("SDXL negative micro-conditioning: both sizes or none, crops defaulted",
          "[http][validation][sdxl]") {
  // Left out: all three unset (the unconditional half reuses the positive ones).
  JobRequest none = ok(R"({"prompt":"x"})", true);
  CHECK_FALSE(none.negative_original_size.has_value());
  CHECK_FALSE(none.negative_crops_coords_top_left.has_value());
  CHECK_FALSE(none.negative_target_size.has_value());
  JobRequest both = ok(R"({"prompt":"x","negative_original_size":[512,384],
      "negative_target_size":[32,48]})",
                       true);
  CHECK(both.negative_original_size == std::array<int, 2>{512, 384});
  CHECK(both.negative_crops_coords_top_left == std::array<int, 2>{0, 0});  // diffusers' default
  CHECK(both.negative_target_size == std::array<int, 2>{32, 48});
  CHECK(both.original_size == std::array<int, 2>{512, 512});  // the positive ones untouched
  JobRequest all = ok(R"({"prompt":"x","negative_original_size":[512,384],
      "negative_crops_coords_top_left":[0,24],"negative_target_size":[32,48]})",
                      true);
  CHECK(all.negative_crops_coords_top_left == std::array<int, 2>{0, 24});

  // Half given: diffusers would ignore it; a 400 naming the missing size.
  expect_field(R"({"prompt":"x","negative_original_size":[64,64]})", "negative_target_size",
               "missing_field", true);
  expect_field(R"({"prompt":"x","negative_target_size":[64,64]})", "negative_original_size",
               "missing_field", true);
  expect_field(R"({"prompt":"x","negative_crops_coords_top_left":[8,8]})", "negative_original_size",
               "missing_field", true);
  ValidationError half = bad(R"({"prompt":"x","negative_original_size":[64,64]})", {}, true);
  CHECK_THAT(half.message, Catch::Contains("both"));

  for (const char* field :
       {"negative_original_size", "negative_crops_coords_top_left", "negative_target_size"}) {
    const std::string f = field;
    expect_field(R"({"prompt":"x",")" + f + R"(":[1,2,3]})", f, "invalid_field", true);
    expect_field(R"({"prompt":"x",")" + f + R"(":[64,99999]})", f, "invalid_field", true);
    expect_field(R"({"prompt":"x",")" + f + R"(":[-1,64]})", f, "invalid_field", true);
    ValidationError e = bad(R"({"prompt":"x",")" + f + R"(":[64,64]})");  // SD 1.x/2.x
    CHECK(e.field == f);
    CHECK_THAT(e.message, Catch::Contains("SDXL models only"));
  }
  expect_field(R"({"prompt":"x","negative_original_size":[0,64],"negative_target_size":[64,64]})",
               "negative_original_size", "invalid_field", true);
}

TEST_CASE("model, loras and prompt_syntax are read and checked", "[http][validation]") {
  JobRequest r = ok(R"({"prompt":"x","model":"other","prompt_syntax":"A1111",
      "loras":[{"name":"style","weight":0.8},{"name":"detail"},{"name":"neg","weight":-1.5}]})");
  CHECK(r.model == "other");
  CHECK(r.prompt_syntax == PromptSyntax::a1111);
  REQUIRE(r.loras.size() == 3);
  CHECK(r.loras[0] == LoraRef{"style", 0.8});
  CHECK(r.loras[1] == LoraRef{"detail", 1.0});  // weight defaults to 1, as <lora:detail>
  CHECK(r.loras[2] == LoraRef{"neg", -1.5});
  JobRequest plain = ok(R"({"prompt":"x"})");
  CHECK(plain.model.empty());
  CHECK(plain.loras.empty());
  CHECK(plain.prompt_syntax == PromptSyntax::plain);

  expect_field(R"({"prompt":"x","prompt_syntax":"comfy"})", "prompt_syntax");
  expect_field(R"({"prompt":"x","prompt_syntax":1})", "prompt_syntax");
  expect_field(R"({"prompt":"x","model":5})", "model");
  expect_field(R"({"prompt":"x","loras":"style"})", "loras");
  expect_field(R"({"prompt":"x","loras":[{"weight":1}]})", "loras[0].name", "missing_field");
  expect_field(R"({"prompt":"x","loras":[{"name":"a","weight":"1"}]})", "loras[0].weight");
  expect_field(R"({"prompt":"x","loras":[{"name":"a","weight":11}]})", "loras[0].weight");
  expect_field(R"({"prompt":"x","loras":[{"name":"a","strength":1}]})", "loras[0].strength",
               "unknown_field");
  // A LoRA is a name in the LoRA directory, never a path.
  for (const char* name : {"../x", "a/b", "..", ".", "a\\\\b", ""}) {
    INFO(name);
    expect_field(std::string(R"({"prompt":"x","loras":[{"name":")") + name + R"("}]})",
                 "loras[0].name");
  }
  RequestLimits few;
  few.max_loras = 1;
  ValidationError e = bad(R"({"prompt":"x","loras":[{"name":"a"},{"name":"b"}]})", few);
  CHECK(e.field == "loras");
}

TEST_CASE("<lora:...> tags move from the prompts into the job's LoRA set", "[http][validation]") {
  // As A1111's extra_networks.parse_prompt: the tag becomes "", nothing else changes.
  JobRequest tag = ok(R"({"prompt":"a photograph of a horse <lora:style:0.8>"})");
  JobRequest named =
      ok(R"({"prompt":"a photograph of a horse ","loras":[{"name":"style","weight":0.8}]})");
  CHECK(tag.prompts == named.prompts);
  CHECK(tag.prompts[0] == "a photograph of a horse ");
  CHECK(tag.loras == named.loras);
  // <lora:NAME> = weight 1; te == unet weight accepted; tags of every prompt and the negative
  // prompt, after loras[], each name once; other extra networks stay in the text.
  JobRequest r =
      ok(R"({"prompts":["a, <lora:a>, b <hypernet:h:1>", "<lora:b:-0.5:-0.5>c<lora:a:1>"],
      "negative_prompt":"ugly <lora:c:2>","loras":[{"name":"z","weight":0.1}]})");
  CHECK(r.prompts == std::vector<std::string>{"a, , b <hypernet:h:1>", "c"});
  REQUIRE(r.negative_prompt);
  CHECK(*r.negative_prompt == "ugly ");
  CHECK(r.loras == std::vector<LoraRef>{{"z", 0.1}, {"a", 1.0}, {"b", -0.5}, {"c", 2.0}});
  // Not tags: no ':' after the type, nothing after it, no closing '>'.
  JobRequest plain = ok(R"({"prompt":"<lora> <lora:> <lora:x"})");
  CHECK(plain.prompts[0] == "<lora> <lora:> <lora:x");
  CHECK(plain.loras.empty());
  // The same syntax whatever prompt_syntax says.
  CHECK(ok(R"({"prompt":"x <lora:s:0.3>","prompt_syntax":"a1111"})").loras ==
        std::vector<LoraRef>{{"s", 0.3}});

  expect_field(R"({"prompt":"x <lora:../etc/passwd:1>"})", "prompt");
  expect_field(R"({"prompts":["x","y <lora:a/b>"]})", "prompts[1]");
  expect_field(R"({"prompt":"x","negative_prompt":"<lora:..:1>"})", "negative_prompt");
  expect_field(R"({"prompt":"x <lora:a:strong>"})", "prompt");
  expect_field(R"({"prompt":"x <lora:a:0.5:1>"})", "prompt");             // separate UNet weight
  expect_field(R"({"prompt":"x <lora:a:te=0.5>"})", "prompt");            // named arguments
  expect_field(R"({"prompt":"x <lora:a:11>"})", "prompt");                // beyond max_lora_weight
  expect_field(R"({"prompt":"x <lora:a:0.5> <lora:a:0.6>"})", "prompt");  // two weights
  CHECK(bad(R"({"prompt":"<lora:a:0.5>","loras":[{"name":"a","weight":0.6}]})")
            .message.find("one weight per job") != std::string::npos);
  RequestLimits few;
  few.max_loras = 1;
  CHECK(bad(R"({"prompt":"<lora:a> <lora:b>"})", few).field == "loras");
}
