// LoRA: low-rank weight deltas merged into a replica's weights, A1111's way.
// Ref: AUTOMATIC1111 extensions-builtin/Lora (networks.py network_apply_weights, network_lora.py
// NetworkModuleLora.calc_updown, network.py NetworkModule.finalize_updown); key layouts as
// diffusers loaders/lora_conversion_utils.py understands them.
//
// Files: kohya/A1111 (`lora_unet_*`, `lora_te_*`, `lora_te1_*`, `lora_te2_*` with
// `.lora_down.weight` / `.lora_up.weight` / `.alpha`; UNet names in the diffusers or the LDM/SGM
// layout) and diffusers/PEFT (`unet.<module>.lora_A.weight` / `.lora_B.weight`,
// `text_encoder.*`, `text_encoder_2.*`; also the older `.lora.down/up.weight`). Linear layers
// (down [r, in], up [out, r]) and convolutions (down [r, in, kh, kw], up [out, r, 1, 1]: LoCon).
// Math: W' = W + m * (alpha / r) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape), in
// float32, each file of a set in order; alpha = r when the file has none. Biases unchanged.
//
// Owner: LoraState belongs to one model replica (pipeline/txt2img.h StableDiffusion); only
// that replica's thread may call apply(). It never writes into a weight tensor: a merged weight
// is a new tensor swapped into the parameter (set_data), and the original tensor is kept and
// swapped back, so the base weights come back bit for bit.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pipeline/safetensors.h"

namespace diffusiond {

class LoraError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One LoRA of a set: its file and multiplier (negative allowed).
struct LoraApplication {
  std::filesystem::path path;
  double weight = 1.0;
};

// A module a LoRA may target: the component ("unet", "text_encoder", "text_encoder_2") and its
// module tree (parameter names as diffusers / transformers name them).
struct LoraTarget {
  std::string component;
  std::shared_ptr<torch::nn::Module> module;
};

// One layer of a LoRA file, resolved to a target weight ("unet:down_blocks.0....to_q").
struct LoraLayer {
  std::string target;  // component + ":" + module path
  torch::Tensor down;  // [r, in] or [r, in, kh, kw], as stored (CPU, the file's dtype)
  torch::Tensor up;    // [out, r] or [out, r, 1, 1]
  double scale = 1.0;  // alpha / r (1 when the file has no alpha)
};

struct LoraFileLayers {
  std::vector<LoraLayer> layers;
  std::vector<std::string> ignored;  // keys that name no module of the model, or unsupported
};

// The name lookup of a model's targets: every Linear/Conv2d weight under its kohya names
// (diffusers and, for the UNet, LDM/SGM paths, '.' -> '_') and its diffusers/PEFT name.
class LoraTargetIndex {
 public:
  explicit LoraTargetIndex(const std::vector<LoraTarget>& targets);
  // The weight parameter of a target ("unet:conv_in"), or nullptr.
  const torch::Tensor* weight(const std::string& target) const;
  // The target a file's layer stem names ("lora_unet_down_blocks_0_..." / "unet.down_blocks.0.")
  // or "" when none.
  std::string resolve(const std::string& stem) const;

 private:
  std::map<std::string, torch::Tensor> weights_;  // target -> weight parameter (same TensorImpl)
  std::map<std::string, std::string> names_;      // file stem -> target
};

// Reads a LoRA file against the index. Throws LoraError naming the file when a layer is
// malformed (missing half, ranks that differ, a delta whose size is not the weight's) or when
// NOTHING in it matched the model.
LoraFileLayers read_lora(const SafetensorsFile& file, const LoraTargetIndex& index);

// What apply() did: whether the weights changed, and the ignored keys of each file (to log).
struct LoraApplyReport {
  bool changed = false;
  int merged_weights = 0;
  std::vector<std::pair<std::string, std::vector<std::string>>> ignored;  // file -> keys
};

class LoraState {
 public:
  explicit LoraState(std::vector<LoraTarget> targets);
  // Makes the weights W + the set's deltas (empty set: the original weights). The same set as
  // the current one (same files, sizes, mtimes and weights) costs a stat per file. On a
  // failure (unreadable or malformed file) the weights stay as they were and LoraError is thrown.
  LoraApplyReport apply(const std::vector<LoraApplication>& set);
  const std::string& current_key() const { return key_; }

 private:
  struct Swapped {
    torch::Tensor param;     // the module's parameter (its TensorImpl, swapped with set_data)
    torch::Tensor original;  // a handle on the original storage
  };
  LoraTargetIndex index_;
  std::map<std::string, Swapped> swapped_;  // target -> parameter now holding a merged tensor
  std::string key_;                         // the applied set ("" = none)
};

}  // namespace diffusiond
