// diffusiond web UI: start-up, the generate form, the model notice and the device panel.
// Plain ES modules, no build step, nothing loaded from outside the daemon. Runs on the page's
// single JS thread.

import { allowKeyPrompt, ApiError, getJson, onKeyNeeded, sendJson } from './api.js';
import { addImage, initGallery } from './gallery.js';
import { initLoras, loadLoras, loraRequest } from './loras.js';
import { initQueue, trackJob } from './queue.js';

const $ = (sel, root = document) => root.querySelector(sel);

const FIELD_INPUTS = {
  prompt: 'prompt', negative_prompt: 'negative-prompt', width: 'width', height: 'height',
  steps: 'steps', guidance_scale: 'guidance', seed: 'seed', scheduler: 'sampler', n: 'count',
  model: 'model-picker',
  loras: 'lora-pick',
  original_size: 'original-height', crops_coords_top_left: 'crop-top', target_size: 'target-height',
  negative_original_size: 'negative-original-height',
  negative_crops_coords_top_left: 'negative-crop-top',
  negative_target_size: 'negative-target-height',
  prompt_syntax: 'a1111-syntax',
};
// Used only when the daemon's /model gives no size_presets (an older daemon).
const FALLBACK_PRESETS = [[512, 512], [768, 768], [512, 768], [768, 512]];
// SDXL micro-conditioning (and the negative one): request field -> its two inputs, in diffusers'
// order.
const PAIR_FIELDS = [['original_size', 'original-height', 'original-width'],
                     ['crops_coords_top_left', 'crop-top', 'crop-left'],
                     ['target_size', 'target-height', 'target-width'],
                     ['negative_original_size', 'negative-original-height', 'negative-original-width'],
                     ['negative_crops_coords_top_left', 'negative-crop-top', 'negative-crop-left'],
                     ['negative_target_size', 'negative-target-height', 'negative-target-width']];
const samplerLabels = new Map();  // canonical name -> what the user reads

function samplerLabel(name) { return samplerLabels.get(name) || name; }

// ---- notices -------------------------------------------------------------------------------

let toastTimer = 0;
function notify(text) {
  const t = $('#toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 3000);
}

function clearFormError() {
  const box = $('#form-error');
  box.hidden = true;
  box.textContent = '';
  for (const id of Object.values(FIELD_INPUTS)) {
    const input = document.getElementById(id);
    input.removeAttribute('aria-invalid');
    input.removeAttribute('aria-describedby');
  }
}

function showFormError(message, field = '') {
  const box = $('#form-error');
  box.textContent = message;
  box.hidden = false;
  const input = document.getElementById(FIELD_INPUTS[field] || '');
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', 'form-error');
  }
}

// ---- API key dialog ------------------------------------------------------------------------

function askForKey(message) {
  return new Promise((resolve) => {
    const dialog = $('#key-dialog');
    $('#key-message').textContent = message;
    const input = $('#api-key');
    input.value = '';
    dialog.addEventListener('close', () => {
      const key = dialog.returnValue === 'save' && input.value.trim() ? input.value.trim() : null;
      resolve(key);
      // Declined at start-up, given later: fetch what the page could not read without it.
      if (key && !modelLoaded && document.body.dataset.ready) setTimeout(reloadAfterKey, 0);
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    input.focus();
  });
}

// ---- model, samplers, sizes ----------------------------------------------------------------

// The model's own presets (GET /model size_presets: [[w, h], ...]), the default first.
function fillSizePresets(defaults, presets) {
  const select = $('#size-preset');
  select.replaceChildren();
  const add = (value, text) => select.append(new Option(text, value));
  if (defaults.width && defaults.height) {
    add(`${defaults.width}x${defaults.height}`, `Model default (${defaults.width} × ${defaults.height})`);
  }
  const list = Array.isArray(presets) && presets.length ? presets : FALLBACK_PRESETS;
  for (const [w, h] of list) {
    if (w === defaults.width && h === defaults.height) continue;  // already listed
    add(`${w}x${h}`, `${w} × ${h}${w === h ? '' : w < h ? ' (portrait)' : ' (landscape)'}`);
  }
  add('custom', 'Custom');
}

// Selects the preset that matches the width/height inputs, or "Custom".
function syncPreset() {
  const value = `${$('#width').value}x${$('#height').value}`;
  const select = $('#size-preset');
  select.value = [...select.options].some((o) => o.value === value) ? value : 'custom';
}

function fillSamplers(list, preferred) {
  const select = $('#sampler');
  const previous = select.value;
  select.replaceChildren();
  for (const s of list) {
    const name = typeof s === 'string' ? s : s.name;
    const aliases = (typeof s === 'object' && s.aliases) || [];
    const label = s.label || s.display_name || aliases.find((a) => a !== name) || name;
    samplerLabels.set(name, label);
    select.append(new Option(label === name ? name : `${label} (${name})`, name));
  }
  const want = previous || preferred;
  if ([...select.options].some((o) => o.value === want)) select.value = want;
}

// GET /model answers {name, is_test_model, notice, defaults:{width,height,steps,guidance_scale,
// scheduler}}; flat default_* fields (ModelInfo's names) are read too.
function modelDefaults(model) {
  const d = model.defaults || {};
  return {
    width: d.width ?? model.default_width,
    height: d.height ?? model.default_height,
    steps: d.steps ?? model.default_steps,
    guidance_scale: d.guidance_scale ?? model.default_guidance_scale,
    scheduler: d.scheduler ?? model.default_scheduler ?? '',
  };
}

let modelLoaded = false;
let models = [];  // GET /models (several models) or [GET /model]

// Shows a model's notice, defaults and size presets in the form. overwrite: a model picked in the
// picker replaces the size/steps/guidance of the one before (its own defaults apply).
function applyModel(model, overwrite) {
  if (model.name) $('#model-name').textContent = model.name;
  const notice = $('#test-model-notice');
  notice.hidden = !model.is_test_model;
  if (model.is_test_model) {
    notice.textContent = model.notice ||
      'This is the bundled test model: its weights are random, so every image is noise. ' +
      'Start diffusiond with --model pointing at a Stable Diffusion folder or Hugging Face id.';
  }
  const defaults = modelDefaults(model);
  fillSizePresets(defaults, model.size_presets);
  // SDXL: the micro-conditioning fields and the absent/empty negative prompt choice.
  $('#advanced').hidden = !model.micro_conditioning;
  $('#negative-empty-row').hidden = !model.micro_conditioning;
  const set = (id, v) => {
    const i = $(`#${id}`);
    if ((overwrite || i.value === '') && v !== undefined) i.value = v;
  };
  set('width', defaults.width || 512);
  set('height', defaults.height || 512);
  set('steps', defaults.steps || 30);
  set('guidance', defaults.guidance_scale ?? 7.5);
  syncPreset();
  if (overwrite && defaults.scheduler &&
      [...$('#sampler').options].some((o) => o.value === defaults.scheduler)) {
    $('#sampler').value = defaults.scheduler;
  }
  return defaults;
}

function modelLabel(m) {
  const parts = [m.family, m.format === 'single_file' ? 'single file' : ''].filter(Boolean);
  const where = Array.isArray(m.loaded_on) && m.loaded_on.length ? ', loaded' : '';
  return `${m.name}${parts.length ? ` (${parts.join(', ')}${where})` : ''}`;
}

// The model picker (GET /models): shown when the daemon serves more than one model.
function fillModelPicker(list, selected) {
  const picker = $('#model-picker');
  picker.replaceChildren();
  for (const m of list) picker.append(new Option(modelLabel(m), m.name));
  picker.value = selected;
  $('#model-row').hidden = list.length < 2;
}

function pickedModel() {
  const name = $('#model-picker').value;
  return models.find((m) => m.name === name);
}

async function loadModel() {
  let model = {};
  try {
    model = await getJson('/model');
    model = model.model || model;
    modelLoaded = true;
  } catch (e) {
    $('#model-name').textContent = `unknown (${e.message})`;
  }
  models = [model];
  try {
    const answer = await getJson('/models');
    if (Array.isArray(answer.models) && answer.models.length) models = answer.models;
  } catch { /* an older daemon: the one model */ }
  const current = models.find((m) => m.name === model.name) || models[0] || model;
  fillModelPicker(models, current.name);
  const defaults = applyModel(current, false);

  let schedulers = [];
  let preferred = defaults.scheduler;
  try {
    const answer = await getJson('/schedulers');
    schedulers = Array.isArray(answer) ? answer : answer.schedulers || [];
    preferred = preferred || answer.default || '';
  } catch { /* fall back to the model's own list */ }
  if (schedulers.length === 0) schedulers = model.schedulers || [];
  if (schedulers.length === 0 && preferred) schedulers = [preferred];
  fillSamplers(schedulers, preferred);
  await loadLoras();
}

// ---- the form ------------------------------------------------------------------------------

// A number input's value for the request: omitted when empty (the daemon's default applies).
function numberField(id) {
  const v = $(`#${id}`).value.trim();
  if (v === '') return undefined;
  const n = Number(v);
  return Number.isNaN(n) ? v : n;
}

function randomSeed() {
  return String(crypto.getRandomValues(new Uint32Array(1))[0]);
}

function buildRequest() {
  const body = { prompt: $('#prompt').value.trim() };
  // Empty box: no negative prompt (SDXL: zeros), unless "send an empty one" is ticked.
  const negative = $('#negative-prompt').value.trim();
  if (negative) body.negative_prompt = negative;
  else if (!$('#negative-empty-row').hidden && $('#negative-empty').checked) body.negative_prompt = '';
  if (!$('#advanced').hidden) {
    for (const [field, first, second] of PAIR_FIELDS) {
      const a = numberField(first), b = numberField(second);
      if (a !== undefined || b !== undefined) body[field] = [a ?? null, b ?? null];
    }
  }
  for (const [field, id] of [['width', 'width'], ['height', 'height'], ['steps', 'steps'],
                             ['guidance_scale', 'guidance'], ['n', 'count']]) {
    const v = numberField(id);
    if (v !== undefined) body[field] = v;
  }
  if ($('#sampler').value) body.scheduler = $('#sampler').value;
  if ($('#a1111-syntax').checked) body.prompt_syntax = 'a1111';  // unticked: plain (the default)
  if (!$('#model-row').hidden && $('#model-picker').value) body.model = $('#model-picker').value;
  const loras = loraRequest();
  if (loras.length > 0) body.loras = loras;
  const seed = $('#seed').value.trim();
  body.seed = seed === '' ? randomSeed() : seed;  // a digit string is sent as a JSON number
  return body;
}

let submitting = false;
async function submitForm() {
  if (submitting) return;
  clearFormError();
  const body = buildRequest();
  if (!body.prompt) {
    showFormError('Write a prompt first.', 'prompt');
    $('#prompt').focus();
    return;
  }
  submitting = true;
  allowKeyPrompt();
  const button = $('#generate');
  button.disabled = true;
  try {
    const answer = await sendJson('POST', '/generate', body);
    trackJob(answer.job || answer);
  } catch (e) {
    const field = e instanceof ApiError ? e.field : '';
    showFormError(`Not queued: ${e.message}`, field);
  } finally {
    submitting = false;
    button.disabled = false;
  }
}

function reuseSeed(seed) {
  const input = $('#seed');
  input.value = seed;
  input.scrollIntoView({ block: 'center', behavior: 'smooth' });
  input.focus({ preventScroll: true });
  notify(`Seed ${seed} will be used for the next image.`);
}

function wireForm() {
  const form = $('#generate-form');
  form.addEventListener('submit', (e) => { e.preventDefault(); submitForm(); });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !$('dialog[open]')) {
      e.preventDefault();
      submitForm();
    }
  });
  $('#seed-random').addEventListener('click', () => { $('#seed').value = randomSeed(); });
  $('#model-picker').addEventListener('change', () => {
    const m = pickedModel();
    if (m) applyModel(m, true);
  });
  $('#size-preset').addEventListener('change', () => {
    const v = $('#size-preset').value;
    if (v === 'custom') { $('#width').focus(); return; }
    const [w, h] = v.split('x');
    $('#width').value = w;
    $('#height').value = h;
  });
  $('#width').addEventListener('input', syncPreset);
  $('#height').addEventListener('input', syncPreset);
}

// ---- devices -------------------------------------------------------------------------------

function gib(bytes) { return (bytes / 2 ** 30).toFixed(1); }

function deviceState(d) {
  if (d.loaded === false) return ['loading', 'Loading model'];
  if (d.healthy === false) return ['unhealthy', d.health === 'probing' ? 'Probing' : 'Unhealthy'];
  if (d.busy) return ['busy', 'Busy'];
  return ['idle', 'Idle'];
}

function renderDevices(list) {
  const ul = $('#devices');
  ul.replaceChildren();
  for (const d of list) {
    const [state, words] = deviceState(d);
    const li = document.createElement('li');
    li.className = 'device';
    li.dataset.state = state;
    li.dataset.device = d.name;
    const head = document.createElement('div');
    head.className = 'device-head';
    const name = document.createElement('strong');
    name.textContent = d.name;
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.textContent = words;
    head.append(name, badge);
    const desc = document.createElement('p');
    desc.className = 'desc';
    desc.textContent = d.description || '';
    const facts = document.createElement('dl');
    const fact = (term, value) => {
      const dt = document.createElement('dt');
      dt.textContent = term;
      const dd = document.createElement('dd');
      dd.textContent = value;
      facts.append(dt, dd);
    };
    fact('Images done', String(d.images_done ?? 0));
    fact('Steps/s', Number(d.steps_per_second || 0).toFixed(2));
    if (d.memory_total_bytes > 0) {
      fact('Memory', `${gib(d.memory_used_bytes || 0)} / ${gib(d.memory_total_bytes)} GiB`);
    }
    if (d.busy && d.current_job) fact('Job', d.current_job);
    if (d.healthy === false && d.last_error) fact('Last error', d.last_error);
    li.append(head, desc, facts);
    ul.append(li);
  }
}

async function pollDevices() {
  const err = $('#devices-error');
  try {
    const answer = await getJson('/devices');
    renderDevices(Array.isArray(answer) ? answer : answer.devices || []);
    err.hidden = true;
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
  setTimeout(pollDevices, document.hidden ? 10000 : 2000);
}

// ---- start ---------------------------------------------------------------------------------

async function loadHistory() {
  try {
    const answer = await getJson('/jobs?limit=20');
    const jobs = Array.isArray(answer) ? answer : answer.jobs || [];
    for (const j of jobs) trackJob(j, { append: true });  // newest first
  } catch { /* an empty queue is fine */ }
}

async function reloadAfterKey() {
  await loadModel();
  loadHistory();
}

async function start() {
  onKeyNeeded(askForKey);
  initGallery({ samplerLabel, onReuseSeed: reuseSeed, notify });
  initQueue({ samplerLabel, onImage: addImage });
  wireForm();
  initLoras();
  await loadModel();  // first, so that a 401 asks for the key only once
  loadHistory();
  pollDevices();
  document.body.dataset.ready = 'true';
}

start();
