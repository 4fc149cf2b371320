// Locating a model: a diffusers folder (a local path, or a Hugging Face repo id resolved offline
// in the HF cache exactly like diffusers with local_files_only=True), or a single-file
// checkpoint (FILE.safetensors in the original LDM layout; single_file.h says where its configs
// come from). The one resolver of every --model the commands accept.
// Thread-safety: free functions; ModelFolder is a value type.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace diffusiond {

class ModelNotFound : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ModelFolder {
  std::filesystem::path root;  // folder holding model_index.json (and the configs, tokenizers)
  std::string name;            // what the user gave (path or repo id)
  std::string variant;         // "" or "fp16"
  nlohmann::json model_index;  // parsed model_index.json
  // A single-file checkpoint: every component's weights come from this file (LDM key names,
  // mapped by ldm_keys.h), the configs from root. Empty for a diffusers folder.
  std::filesystem::path checkpoint;
  std::string config_source;  // single file: where root came from, for logs and GET /model
  // Applied over root/scheduler/scheduler_config.json (a sibling .yaml's parameterization "v").
  nlohmann::json scheduler_overrides = nlohmann::json::object();

  bool is_single_file() const { return !checkpoint.empty(); }
  // What the model is on disk: the checkpoint file, else root.
  std::filesystem::path location() const { return is_single_file() ? checkpoint : root; }
  // root/COMPONENT/config.json (scheduler: root/scheduler/scheduler_config.json).
  std::filesystem::path config_path(const std::string& component) const;
  // The scheduler config as the pipeline uses it: the file with scheduler_overrides applied.
  nlohmann::json scheduler_config() const;
  // The component's weights: root/COMPONENT/<diffusion_pytorch_model|model>[.VARIANT].safetensors.
  // Throws ModelNotFound naming every file name tried; std::logic_error for a single file (its
  // weights are views of the checkpoint: component_weights.h).
  std::filesystem::path weights_path(const std::string& component) const;
};

// HF cache roots in diffusers' order: $HF_HUB_CACHE, else $HF_HOME/hub, else
// ~/.cache/huggingface/hub (only the first that is set is used, like huggingface_hub).
std::filesystem::path hf_hub_cache_dir();

// spec: a single-file checkpoint (an existing file: resolve_single_file, with `model_config`),
// a folder, or "org/name" looked up as <cache>/models--org--name/refs/main -> snapshots/<rev>/.
// `model_config` (--model-config) applies to single files only. Throws ModelNotFound listing
// every place it looked; for a single file also SafetensorsError / LdmLayoutError / ConfigError.
ModelFolder resolve_model(const std::string& spec, const std::string& variant = "",
                          const std::string& model_config = "");

}  // namespace diffusiond
