// The models a daemon serves: the default one (--model) and the entries of --models-dir, and
// THE one function that loads any of them (load_pipeline; single-file checkpoints go through it
// too, so the single-file loader is wired in one place).
//
// --models-dir DIR (AUTOMATIC1111's models/Stable-diffusion layout welcome): in DIR and in each
// of its sub-folders (one level, shown as "sub/name" as A1111 shows them)
//   - a folder holding model_index.json is a diffusers model, named by the folder;
//   - a *.safetensors or *.ckpt file is a single-file checkpoint, named by its stem;
// hidden entries are skipped; an entry that cannot be read is skipped with a warning. Sorted by
// name (byte order).
// The model hash (A1111's "Model hash", ModelHasher): a single file's sha256; for a diffusers
// folder, the sha256 of its UNet weights file (the file --variant picks) — the part that makes
// one checkpoint differ from another of its family.
// Thread-safety: free functions; scans read the disk (start-up only).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "daemon/api/views.h"
#include "pipeline/model_folder.h"
#include "pipeline/txt2img.h"

namespace diffusiond {

struct ModelSource {
  ModelInfo info;      // name, format, path, defaults, size, hash_file
  ModelFolder folder;  // diffusers: the resolved folder; single_file: root = the file
};

struct ModelLibrary {
  std::vector<ModelSource> models;   // sorted by name
  std::vector<std::string> skipped;  // "entry: why", logged by the caller
};

// Scans DIR as above. Throws ModelNotFound when DIR is not a readable folder.
ModelLibrary scan_models_dir(const std::filesystem::path& dir, const std::string& variant = "",
                             int default_steps = 0);
// One diffusers folder's entry (name = folder.name). Reads its configs.
ModelSource describe_folder(const ModelFolder& folder, int default_steps = 0);
// One single-file checkpoint's entry: its family and defaults from its keys and configs
// (resolve_single_file reads the header only); a file that does not resolve is still listed,
// with SD 1.x defaults, and load_pipeline() fails with the loader's message.
ModelSource describe_single_file(const std::filesystem::path& file, const std::string& name,
                                 const std::string& file_name, int default_steps = 0);

// What `serve` serves: the default (index 0 when given, is_default set) then the library's
// entries; an entry equal to the default (same path) is not listed twice. `default_spec`
// names the default among the library entries when `default_model` is null (find_model rules);
// "" = the first by name. Throws ModelNotFound when there is nothing to serve or the default
// is not found.
std::vector<ModelSource> served_models(const ModelSource* default_model, ModelLibrary library,
                                       const std::string& default_spec = {});

// THE model-loading call: any served model onto a device. Throws with the loader's message.
std::unique_ptr<StableDiffusion> load_pipeline(const ModelSource& model, torch::Device device,
                                               torch::ScalarType dtype);

}  // namespace diffusiond
