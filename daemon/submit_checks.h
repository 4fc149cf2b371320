// The checks of a submission that do not depend on where jobs are stored, shared by the two
// cores (CoreService on SQLite, ClusterService on PostgreSQL): one owner per rule. And how a
// device worker is shown (/devices), also shared.
// Thread-safety: pure functions (check_loras stats the LoRA files).
#pragma once

#include <vector>

#include "daemon/api/service.h"
#include "daemon/dispatcher.h"
#include "daemon/lora_catalog.h"

namespace diffusiond {

struct WorkerStats;

// The model id (index in `models`) a request's `model` names. Throws ServiceError
// invalid_request (unknown_model, field "model") listing the served ones.
int resolve_model(const std::vector<ModelInfo>& models, const GenerateRequest& asked);
// Throws ServiceError unknown_lora (field "loras") for the first name not in the folder
// (catalog null: no LoRA folder).
void check_loras(const LoraCatalog* catalog, const std::vector<LoraRef>& loras);
// Throws ServiceError forbidden (priority_not_allowed) for a priority above 0 from a caller
// that may not prioritise.
void check_priority(const JobRequest& request, const SubmitContext& context);

// A device as /devices shows it.
DeviceView device_view(const WorkerStats& stats, const DeviceHealthState& health,
                       const std::vector<ModelInfo>& models);

}  // namespace diffusiond
