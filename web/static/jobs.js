// diffusiond web UI: the client's view of a job, built from GET /jobs/{id} answers and SSE events.
// Pure data helpers (no DOM); the page's single JS thread owns every Job object.

const RANK = { queued: 0, running: 1, done: 2, failed: 2, cancelled: 2 };
export const TERMINAL = new Set(['done', 'failed', 'cancelled']);

export function isActive(job) { return !TERMINAL.has(job.status); }

function errorText(e) {
  if (!e) return '';
  if (typeof e === 'string') return e;
  return e.message || e.code || '';
}

function numberOr(v, fallback) {
  const n = Number(v);
  return v === undefined || v === null || v === '' || Number.isNaN(n) ? fallback : n;
}

// Image k of a job: where its PNG is served.
export function imagePath(jobId, k) {
  return `/jobs/${encodeURIComponent(jobId)}/images/${k}.png`;
}

function normaliseImage(jobId, raw, k) {
  const index = numberOr(raw.index, k);
  const status = raw.status || 'queued';
  const progress = raw.progress || {};
  return {
    index,
    prompt: raw.prompt || '',
    seed: raw.seed === undefined ? '' : String(raw.seed),
    status,
    device: raw.device || '',
    step: numberOr(raw.step ?? progress.step, status === 'done' ? numberOr(raw.steps, 0) : 0),
    steps: numberOr(raw.steps ?? progress.steps, 0),
    url: raw.url || (status === 'done' || raw.has_file ? imagePath(jobId, index) : ''),
    error: errorText(raw.error),
  };
}

// Turns a job JSON answer into the client's Job. Accepts the request's fields either nested under
// "request"/"params" or at the top level.
export function normaliseJob(raw) {
  const req = raw.request || raw.params || raw;
  const prompts = Array.isArray(req.prompts) ? req.prompts : (req.prompt ? [req.prompt] : []);
  const job = {
    id: String(raw.id),
    status: raw.status || 'queued',
    error: errorText(raw.error),
    prompts,
    negative_prompt: req.negative_prompt || '',
    negative_prompt_absent: req.negative_prompt === null || req.negative_prompt === undefined,
    original_size: req.original_size || null,
    crops_coords_top_left: req.crops_coords_top_left || null,
    target_size: req.target_size || null,
    negative_original_size: req.negative_original_size || null,
    negative_crops_coords_top_left: req.negative_crops_coords_top_left || null,
    negative_target_size: req.negative_target_size || null,
    n: numberOr(req.n, 1),
    steps: numberOr(req.steps, 0),
    guidance_scale: numberOr(req.guidance_scale, ''),
    width: numberOr(req.width, 0),
    height: numberOr(req.height, 0),
    scheduler: req.scheduler || '',
    seed: req.seed === undefined ? '' : String(req.seed),
    model: typeof raw.model === 'string' ? raw.model : (raw.model && raw.model.name) || '',
    created_ms: numberOr(raw.created_ms, Date.now()),
    images: [],
  };
  const images = Array.isArray(raw.images) ? raw.images : [];
  job.images = images.map((im, k) => normaliseImage(job.id, im, k));
  for (const im of job.images) {
    if (!im.steps) im.steps = job.steps;
    if (!im.prompt) im.prompt = prompts[Math.floor(im.index / Math.max(1, job.n))] || prompts[0] || '';
  }
  return job;
}

// Folds a fresher job snapshot into `job`, never moving progress or a state backwards (a GET
// answer may be older than an SSE event that already arrived).
export function mergeJob(job, fresh) {
  if (RANK[fresh.status] >= RANK[job.status]) job.status = fresh.status;
  if (fresh.error) job.error = fresh.error;
  if (fresh.model) job.model = fresh.model;
  for (const im of fresh.images) {
    const mine = job.images[im.index];
    if (!mine) { job.images[im.index] = im; continue; }
    if (RANK[im.status] >= RANK[mine.status]) mine.status = im.status;
    mine.step = Math.max(mine.step, im.step);
    mine.steps = im.steps || mine.steps;
    mine.device = im.device || mine.device;
    mine.url = mine.url || im.url;
    mine.error = im.error || mine.error;
    if (!mine.seed) mine.seed = im.seed;
  }
}

// Ensures image k exists (events may name an image a snapshot did not list yet).
export function imageOf(job, k) {
  const index = Number.isInteger(k) && k >= 0 ? k : 0;
  if (!job.images[index]) {
    job.images[index] = normaliseImage(job.id, { index, steps: job.steps }, index);
  }
  return job.images[index];
}

// Applies one SSE event to the job. Returns true when the job reached a final state.
export function applyEvent(job, type, data) {
  const d = data && typeof data === 'object' ? data : {};
  const k = d.image ?? d.index;
  switch (type) {
    case 'queued':
      break;
    case 'started': {
      const im = imageOf(job, k);
      if (im.status === 'queued') im.status = 'running';
      if (d.device) im.device = d.device;
      if (job.status === 'queued') job.status = 'running';
      break;
    }
    case 'progress': {
      const im = imageOf(job, k);
      if (im.status === 'queued') im.status = 'running';
      im.step = Math.max(im.step, numberOr(d.step, 0));
      if (d.steps) im.steps = numberOr(d.steps, im.steps);
      if (d.device) im.device = d.device;
      if (job.status === 'queued') job.status = 'running';
      break;
    }
    case 'image': {
      const im = imageOf(job, k);
      if (d.status === 'failed') {
        im.status = 'failed';
        im.error = errorText(d.error) || 'This image failed.';
        break;
      }
      im.status = 'done';
      im.step = Math.max(im.step, im.steps);
      im.url = d.url || im.url || imagePath(job.id, im.index);
      if (d.seed !== undefined) im.seed = String(d.seed);
      if (d.device) im.device = d.device;
      break;
    }
    case 'done':
      job.status = 'done';
      return true;
    case 'failed':  // the whole job (one image failing comes as an 'image' event)
      job.status = 'failed';
      job.error = errorText(d.error) || job.error;
      return true;
    case 'cancelled':
      job.status = 'cancelled';
      for (const im of job.images) if (!TERMINAL.has(im.status)) im.status = 'cancelled';
      return true;
    default:
      if (d.id && Array.isArray(d.images)) mergeJob(job, normaliseJob(d));  // a snapshot
  }
  return TERMINAL.has(job.status);
}

// AUTOMATIC1111-style parameters text for one image.
export function parametersText(job, im, samplerLabel) {
  const lines = [im.prompt || job.prompts[0] || ''];
  if (job.negative_prompt) lines.push(`Negative prompt: ${job.negative_prompt}`);
  const fields = [
    `Steps: ${im.steps || job.steps}`,
    `Sampler: ${samplerLabel(job.scheduler)}`,
    `CFG scale: ${job.guidance_scale}`,
    `Seed: ${im.seed}`,
    `Size: ${job.width}x${job.height}`,
  ];
  // SDXL micro-conditioning, as the PNG's parameters chunk writes it (W x H; top,left).
  const wxh = (hw) => `${hw[1]}x${hw[0]}`;
  if (job.original_size) fields.push(`Original size: ${wxh(job.original_size)}`);
  if (job.crops_coords_top_left) fields.push(`Crop top left: ${job.crops_coords_top_left.join(',')}`);
  if (job.target_size) fields.push(`Target size: ${wxh(job.target_size)}`);
  if (job.negative_original_size) fields.push(`Negative original size: ${wxh(job.negative_original_size)}`);
  if (job.negative_crops_coords_top_left) {
    fields.push(`Negative crop top left: ${job.negative_crops_coords_top_left.join(',')}`);
  }
  if (job.negative_target_size) fields.push(`Negative target size: ${wxh(job.negative_target_size)}`);
  if (job.model) fields.push(`Model: ${job.model}`);
  if (im.device) fields.push(`Device: ${im.device}`);
  lines.push(fields.join(', '));
  return lines.join('\n');
}
