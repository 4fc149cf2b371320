// Ref: AUTOMATIC1111 extensions-builtin/Lora/networks.py (network_apply_weights, the
// '.' -> '_' module names), network_lora.py (NetworkModuleLora: up/down/alpha, calc_updown),
// network.py (finalize_updown, calc_scale), lyco_helpers.rebuild_conventional; diffusers
// loaders/lora_conversion_utils.py (_maybe_map_sgm_blocks_to_diffusers: the LDM/SGM UNet paths).
#include "pipeline/lora.h"

#include <sys/stat.h>

#include <algorithm>
#include <set>
#include <sstream>

namespace diffusiond {
namespace {

std::string underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(s);
  while (std::getline(in, part, sep)) parts.push_back(part);
  return parts;
}

bool is_number(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The LDM/SGM path (what kohya's SDXL files and A1111's own module names use) of a diffusers UNet
// module path, or "" when it has none. `layers` = layers_per_block; up blocks have layers + 1.
// `up_attn`: the up blocks that have attentions (their upsampler sits at index 2, else 1).
std::string ldm_unet_path(const std::string& path, int layers, const std::set<int>& up_attn) {
  static const std::map<std::string, std::string> resnet = {
      {"norm1", "in_layers.0"},  {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
      {"norm2", "out_layers.0"}, {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"}};
  static const std::map<std::string, std::string> top = {
      {"conv_in", "input_blocks.0.0"},
      {"time_embedding.linear_1", "time_embed.0"},
      {"time_embedding.linear_2", "time_embed.2"},
      {"add_embedding.linear_1", "label_emb.0.0"},
      {"add_embedding.linear_2", "label_emb.0.2"},
      {"conv_norm_out", "out.0"},
      {"conv_out", "out.2"}};
  if (auto it = top.find(path); it != top.end()) return it->second;
  const auto p = split(path, '.');
  auto rest = [&](std::size_t from) {
    std::string r;
    for (std::size_t i = from; i < p.size(); ++i) r += "." + p[i];
    return r;
  };
  auto resnet_rest = [&](std::size_t at) -> std::string {
    if (at >= p.size()) return "";
    auto it = resnet.find(p[at]);
    return it == resnet.end() ? "" : "." + it->second + rest(at + 1);
  };
  if (p.size() < 4) return "";
  if (p[0] == "mid_block" && is_number(p[2])) {
    const int l = std::stoi(p[2]);
    if (p[1] == "attentions") return "middle_block.1" + rest(3);
    if (p[1] == "resnets") {
      const std::string r = resnet_rest(3);
      return r.empty() ? "" : "middle_block." + std::to_string(l == 0 ? 0 : 2) + r;
    }
    return "";
  }
  if ((p[0] != "down_blocks" && p[0] != "up_blocks") || !is_number(p[1]) || !is_number(p[3]))
    return "";
  const int b = std::stoi(p[1]), l = std::stoi(p[3]);
  if (p[0] == "down_blocks") {
    const int base = 1 + b * (layers + 1);
    if (p[2] == "resnets") {
      const std::string r = resnet_rest(4);
      return r.empty() ? "" : "input_blocks." + std::to_string(base + l) + ".0" + r;
    }
    if (p[2] == "attentions") return "input_blocks." + std::to_string(base + l) + ".1" + rest(4);
    if (p[2] == "downsamplers" && p.size() == 5 && p[4] == "conv")
      return "input_blocks." + std::to_string((b + 1) * (layers + 1)) + ".0.op";
    return "";
  }
  const int base = b * (layers + 1);
  if (p[2] == "resnets") {
    const std::string r = resnet_rest(4);
    return r.empty() ? "" : "output_blocks." + std::to_string(base + l) + ".0" + r;
  }
  if (p[2] == "attentions") return "output_blocks." + std::to_string(base + l) + ".1" + rest(4);
  if (p[2] == "upsamplers" && p.size() == 5 && p[4] == "conv")
    return "output_blocks." + std::to_string(base + layers) + "." + (up_attn.count(b) ? "2" : "1") +
           ".conv";
  return "";
}

// kohya prefixes of a component (A1111: lora_te_ for SD 1.x/2.x, lora_te1_/lora_te2_ for SDXL).
std::vector<std::string> kohya_prefixes(const std::string& component) {
  if (component == "unet") return {"lora_unet_"};
  if (component == "text_encoder") return {"lora_te_", "lora_te1_"};
  if (component == "text_encoder_2") return {"lora_te2_"};
  return {};
}

// The layer-stem suffixes understood, and which half each one is.
enum class Part { down, up, alpha };
const std::vector<std::pair<std::string, Part>>& suffixes() {
  static const std::vector<std::pair<std::string, Part>> all = {
      {".lora_down.weight", Part::down},
      {".lora_up.weight", Part::up},
      {".lora_A.weight", Part::down},
      {".lora_B.weight", Part::up},
      {".lora.down.weight", Part::down},
      {".lora.up.weight", Part::up},
      {".lora_linear_layer.down.weight", Part::down},
      {".lora_linear_layer.up.weight", Part::up},
      {".alpha", Part::alpha}};
  return all;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape(const torch::Tensor& t) {
  return c10::str(t.sizes());
}

std::string file_key(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw LoraError(path.string() + ": no such LoRA file");
  std::ostringstream key;
  key << path.string() << '|' << st.st_size << '|' << st.st_mtim.tv_sec << '.'
      << st.st_mtim.tv_nsec;
  return key.str();
}

}  // namespace

LoraTargetIndex::LoraTargetIndex(const std::vector<LoraTarget>& targets) {
  for (const LoraTarget& target : targets) {
    if (!target.module) continue;
    const auto modules = target.module->named_modules("", /*include_self=*/false);
    int layers = 0;
    std::set<int> up_attn;
    if (target.component == "unet") {
      for (const auto& item : modules) {
        const auto p = split(item.key(), '.');
        if (p.size() >= 4 && p[0] == "down_blocks" && p[1] == "0" && p[2] == "resnets" &&
            is_number(p[3]))
          layers = std::max(layers, std::stoi(p[3]) + 1);
        if (p.size() >= 3 && p[0] == "up_blocks" && p[2] == "attentions" && is_number(p[1]))
          up_attn.insert(std::stoi(p[1]));
      }
    }
    for (const auto& item : modules) {
      const auto own = item.value()->named_parameters(/*recurse=*/false);
      const torch::Tensor* w = own.find("weight");
      if (!w || (w->dim() != 2 && w->dim() != 4)) continue;  // Linear and Conv2d weights only
      const std::string path = item.key();
      const std::string id = target.component + ":" + path;
      weights_[id] = *w;
      names_[target.component + "." + path] = id;
      for (const auto& prefix : kohya_prefixes(target.component)) {
        names_[prefix + underscored(path)] = id;
        if (target.component == "unet" && layers > 0) {
          const std::string ldm = ldm_unet_path(path, layers, up_attn);
          if (!ldm.empty()) names_[prefix + underscored(ldm)] = id;
        }
      }
    }
  }
}

const torch::Tensor* LoraTargetIndex::weight(const std::string& target) const {
  auto it = weights_.find(target);
  return it == weights_.end() ? nullptr : &it->second;
}

std::string LoraTargetIndex::resolve(const std::string& stem) const {
  auto it = names_.find(stem);
  return it == names_.end() ? "" : it->second;
}

LoraFileLayers read_lora(const SafetensorsFile& file, const LoraTargetIndex& index) {
  const std::string where = file.path().string();
  struct Halves {
    std::string down, up, alpha;
  };
  std::map<std::string, Halves> stems;  // file stem -> its keys
  LoraFileLayers out;
  for (const auto& info : file.tensors()) {
    bool known = false;
    for (const auto& [suffix, part] : suffixes()) {
      if (!ends_with(info.name, suffix)) continue;
      Halves& h = stems[info.name.substr(0, info.name.size() - suffix.size())];
      (part == Part::down ? h.down : part == Part::up ? h.up : h.alpha) = info.name;
      known = true;
      break;
    }
    if (!known) out.ignored.push_back(info.name);  // lora_mid, LoHa/LoKr, dora_scale, ...
  }
  for (const auto& [stem, h] : stems) {
    const std::string target = index.resolve(stem);
    if (target.empty()) {
      for (const auto* key : {&h.down, &h.up, &h.alpha})
        if (!key->empty()) out.ignored.push_back(*key);
      continue;
    }
    if (h.down.empty() || h.up.empty())
      throw LoraError(
          where + ": layer '" + stem + "' has " +
          (h.down.empty() ? "no down (lora_down / lora_A)" : "no up (lora_up / lora_B)") +
          " weight");
    LoraLayer layer;
    layer.target = target;
    layer.down = file.tensor(h.down);
    layer.up = file.tensor(h.up);
    const torch::Tensor& w = *index.weight(target);
    const int64_t r = layer.down.dim() >= 1 ? layer.down.size(0) : 0;
    const bool ok_dims = (layer.down.dim() == 2 && layer.up.dim() == 2) ||
                         (layer.down.dim() == 4 && layer.up.dim() == 4 && layer.up.size(2) == 1 &&
                          layer.up.size(3) == 1);
    if (!ok_dims || r == 0 || layer.up.size(1) != r || layer.up.size(0) != w.size(0) ||
        layer.up.size(0) * layer.down.numel() / r != w.numel() ||
        layer.down.numel() / r != w.numel() / w.size(0))
      throw LoraError(where + ": layer '" + stem + "' (down " + shape(layer.down) + ", up " +
                      shape(layer.up) + ") does not fit " + target + " " + shape(w) +
                      " (a LoRA for another model?)");
    if (!h.alpha.empty()) {
      const torch::Tensor alpha = file.tensor(h.alpha);
      if (alpha.numel() != 1)
        throw LoraError(where + ": '" + h.alpha + "' is not a scalar (" + shape(alpha) + ")");
      const double a = alpha.to(torch::kFloat64).item<double>();
      layer.scale = a != 0.0 ? a / static_cast<double>(r) : 1.0;  // A1111: no/zero alpha -> 1
    }
    out.layers.push_back(std::move(layer));
  }
  if (out.layers.empty()) {
    std::string first;
    for (std::size_t i = 0; i < out.ignored.size() && i < 3; ++i)
      first += (i ? ", " : "") + out.ignored[i];
    throw LoraError(where + ": no key of this LoRA names a layer of the model" +
                    (first.empty() ? std::string(" (the file holds no tensors)")
                                   : " (first keys: " + first + ")") +
                    "; understood: kohya/A1111 lora_unet_* / lora_te_* / lora_te1_* / lora_te2_* "
                    "with .lora_down/.lora_up/.alpha, and diffusers/PEFT unet.* / "
                    "text_encoder.* / text_encoder_2.* with .lora_A/.lora_B");
  }
  return out;
}

LoraState::LoraState(std::vector<LoraTarget> targets) : index_(targets) {}

LoraApplyReport LoraState::apply(const std::vector<LoraApplication>& set) {
  LoraApplyReport report;
  std::string key;
  for (const auto& use : set) {
    std::ostringstream w;
    w << std::hexfloat << use.weight;
    key += file_key(use.path) + "|" + w.str() + "\n";
  }
  if (key == key_) return report;

  torch::NoGradGuard no_grad;
  // Every merged weight is computed before any is swapped in: a bad file changes nothing.
  std::map<std::string, torch::Tensor> sums;  // target -> float32 W + deltas so far
  for (const auto& use : set) {
    const auto file = SafetensorsFile::open(use.path);
    LoraFileLayers layers = read_lora(*file, index_);
    if (!layers.ignored.empty()) report.ignored.emplace_back(use.path.string(), layers.ignored);
    for (const LoraLayer& layer : layers.layers) {
      const torch::Tensor& param = *index_.weight(layer.target);
      auto& sum = sums[layer.target];
      if (!sum.defined()) {
        auto it = swapped_.find(layer.target);
        const torch::Tensor& base = it != swapped_.end() ? it->second.original : param;
        sum = base.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);
      }
      const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(param.device());
      const int64_t r = layer.down.size(0);
      const torch::Tensor up = layer.up.to(opts).reshape({layer.up.size(0), -1});
      const torch::Tensor down = layer.down.to(opts).reshape({r, -1});
      sum = sum + torch::matmul(up, down).reshape(param.sizes()) * layer.scale * use.weight;
    }
  }
  std::map<std::string, torch::Tensor> merged;
  for (auto& [target, sum] : sums) {
    const torch::Tensor& param = *index_.weight(target);
    merged[target] = sum.to(param.scalar_type()).contiguous();
  }

  // Swap: weights of the old set that the new one leaves alone get their original back.
  for (auto it = swapped_.begin(); it != swapped_.end();) {
    if (merged.count(it->first)) {
      ++it;
      continue;
    }
    it->second.param.set_data(it->second.original);
    it = swapped_.erase(it);
  }
  for (auto& [target, tensor] : merged) {
    torch::Tensor param = *index_.weight(target);
    auto it = swapped_.find(target);
    if (it == swapped_.end())
      it = swapped_.emplace(target, Swapped{param, param.detach()}).first;  // keeps the storage
    it->second.param.set_data(tensor);
  }
  key_ = key;
  report.changed = true;
  report.merged_weights = static_cast<int>(merged.size());
  return report;
}

}  // namespace diffusiond
