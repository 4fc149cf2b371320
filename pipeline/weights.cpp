#include "pipeline/weights.h"

#include <map>
#include <sstream>
#include <vector>

namespace diffusiond {
namespace {

std::string shape_string(c10::IntArrayRef shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? "," : "") << shape[i];
  out << ']';
  return out.str();
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  return shape_string(c10::IntArrayRef(shape));
}

// name -> tensor for every parameter and buffer (recursive, '.'-joined names).
std::map<std::string, torch::Tensor> module_tensors(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out[item.key()] = item.value();
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out[item.key()] = item.value();
  return out;
}

void append_list(std::ostringstream& msg, const char* what, const std::vector<std::string>& keys) {
  if (keys.empty()) return;
  msg << "; " << keys.size() << ' ' << what << ": ";
  for (std::size_t i = 0; i < keys.size(); ++i) msg << (i ? ", " : "") << keys[i];
}

}  // namespace

void load_weights(torch::nn::Module& module, const SafetensorsFile& file, torch::Device device,
                  torch::ScalarType dtype, const LoadWeightsOptions& options) {
  auto skip = [&](const std::string& key) { return options.ignore && options.ignore(key); };

  auto targets = module_tensors(module);
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [key, tensor] : targets) {
    if (skip(key)) continue;
    const StTensorInfo* info = file.find(key);
    if (!info) {
      missing.push_back(key);
    } else if (c10::IntArrayRef(info->shape) != tensor.sizes()) {
      const std::string source = file.source_of(key);
      mismatched.push_back(key + (source.empty() ? "" : " from " + source) + " (file " +
                           shape_string(info->shape) + ", model " + shape_string(tensor.sizes()) +
                           ")");
    }
  }
  for (const auto& info : file.tensors()) {
    if (!skip(info.name) && !targets.count(info.name)) unexpected.push_back(info.name);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream msg;
    msg << file.describe() << ": state dict does not match the model";
    append_list(msg, "missing key(s)", missing);
    append_list(msg, "unexpected key(s)", unexpected);
    append_list(msg, "mis-shaped key(s)", mismatched);
    throw WeightsError(msg.str());
  }

  torch::NoGradGuard no_grad;
  // Each destination is created straight from the mapped bytes in its final device and dtype
  // (one copy), then swapped into the module's tensor with set_data so that every handle the
  // module holds sees it. Non-floating tensors (e.g. position_ids) keep their own dtype.
  for (auto& [key, tensor] : targets) {
    torch::ScalarType target = tensor.scalar_type();
    if (tensor.is_floating_point()) {
      target = (options.keep_fp32 && options.keep_fp32(key)) ? torch::kFloat32 : dtype;
    }
    if (skip(key) || !file.contains(key)) {
      tensor.set_data(tensor.to(device, target));
      continue;
    }
    torch::Tensor source = file.tensor(key);
    if (!tensor.is_floating_point() && source.is_floating_point()) {
      throw WeightsError(file.describe() + ": key '" + key +
                         "' is floating point in the file but " +
                         std::string(c10::toString(tensor.scalar_type())) + " in the model");
    }
    if (device.is_cpu() && source.scalar_type() == target && source.is_contiguous()) {
      // In place: the parameter IS the mapped bytes (no copy, no anonymous memory; every
      // replica of the model shares the pages). A non-contiguous view (a single file's
      // transposed alias, e.g. SDXL's text_projection) is copied contiguous instead: the
      // kernels take another path for a strided weight, and the bits would differ from the
      // diffusers folder's. READ-ONLY IN USE: code that changes weights
      // (a LoRA merge, fusing, quantising) must build a new tensor and set_data() it in, never
      // write into this one (the write would silently copy the page, per replica).
      tensor.set_data(source);
    } else {
      tensor.set_data(
          source.to(device, target, /*non_blocking=*/false, /*copy=*/true).contiguous());
    }
  }
}

void load_weights(torch::nn::Module& module, const SafetensorsFile& file, torch::Device device,
                  torch::ScalarType dtype, const std::function<bool(const std::string&)>& ignore) {
  LoadWeightsOptions options;
  options.ignore = ignore;
  load_weights(module, file, device, dtype, options);
}

std::vector<std::pair<std::string, torch::Tensor>> state_dict(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : module.named_parameters(true)) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(true)) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace diffusiond
