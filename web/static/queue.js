// diffusiond web UI: the live queue. One list item per job with a progress bar per image, the
// device each image runs on and a cancel button; kept current by the job's SSE stream (read with
// fetch so an API key can be sent), or by polling GET /jobs/{id} when too many streams are open.
// Runs on the page's single JS thread.

import { getJson, sendJson, streamEvents } from './api.js';
import { applyEvent, isActive, mergeJob, normaliseJob, TERMINAL } from './jobs.js';

// A browser opens about six HTTP/1.1 connections per host: leave some for images and the API.
const MAX_STREAMS = 3;
const MAX_LISTED = 30;
const STATUS_WORDS = {
  queued: 'Queued', running: 'Running', done: 'Done', failed: 'Failed', cancelled: 'Cancelled',
};

const entries = new Map();  // job id -> { job, el, following, reported:Set }
let openStreams = 0;
let uid = 0;
let hooks = { onImage: () => {}, samplerLabel: (s) => s };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

export function initQueue(h) { hooks = { ...hooks, ...h }; }

// Adds a job (a job JSON answer) to the queue, or refreshes it if already listed. History loads
// pass `append` so that older jobs go below newer ones.
export function trackJob(raw, { append = false } = {}) {
  const fresh = normaliseJob(raw);
  const known = entries.get(fresh.id);
  if (known) {
    mergeJob(known.job, fresh);
    update(known);
    return known.job;
  }
  const entry = { job: fresh, el: createJobElement(fresh), following: false, reported: new Set() };
  entries.set(fresh.id, entry);
  const list = $('#queue');
  if (append) list.append(entry.el); else list.prepend(entry.el);
  update(entry);
  if (isActive(fresh)) follow(entry);
  trim();
  return fresh;
}

function createJobElement(job) {
  const cancel = el('button', { type: 'button', class: 'cancel', text: 'Cancel',
                                'aria-label': `Cancel job ${job.id}` });
  cancel.addEventListener('click', () => cancelJob(job.id));
  const prompt = job.prompts.join(' | ');
  return el('li', { class: 'job', 'data-job-id': job.id },
    el('div', { class: 'job-head' },
      el('p', { class: 'job-prompt', title: prompt, text: prompt || '(no prompt)' }),
      el('span', { class: 'badge job-status' }),
      cancel),
    el('p', { class: 'job-meta' }),
    el('ol', { class: 'job-images' }),
    el('p', { class: 'job-error error', hidden: '' }));
}

function createImageElement(job, k) {
  const id = `progress-${++uid}`;
  return el('li', { class: 'job-image', 'data-index': String(k) },
    el('label', { for: id },
      el('span', { class: 'image-name', text: `Image ${k + 1}` }),
      el('span', { class: 'image-device' }),
      el('span', { class: 'image-step' })),
    el('progress', { id, max: '1', value: '0' }));
}

// Brings a job's list item in line with its data.
function update(entry) {
  const { job, el: li } = entry;
  li.dataset.status = job.status;
  $('.job-status', li).textContent = STATUS_WORDS[job.status] || job.status;
  $('.cancel', li).hidden = !isActive(job);
  const meta = [
    job.width && job.height ? `${job.width}×${job.height}` : '',
    job.steps ? `${job.steps} steps` : '',
    job.scheduler ? hooks.samplerLabel(job.scheduler) : '',
    job.images.length > 1 ? `${job.images.length} images` : '',
    `job ${job.id}`,
  ].filter(Boolean);
  $('.job-meta', li).textContent = meta.join(' · ');

  const list = $('.job-images', li);
  job.images.forEach((im, k) => {
    if (!im) return;
    let item = list.children[k];
    while (!item) { list.append(createImageElement(job, list.children.length)); item = list.children[k]; }
    item.dataset.status = im.status;
    const steps = Math.max(1, im.steps || job.steps || 1);
    const step = im.status === 'done' ? steps : Math.min(im.step, steps);
    const bar = $('progress', item);
    // setAttribute keeps the DOM attribute (what a MutationObserver or a screen reader sees) exact.
    if (bar.getAttribute('max') !== String(steps)) bar.setAttribute('max', String(steps));
    if (bar.getAttribute('value') !== String(step)) bar.setAttribute('value', String(step));
    $('.image-device', item).textContent = im.device ? ` on ${im.device}` : '';
    let stepText = `step ${step} of ${steps}`;
    if (im.status === 'queued') stepText = 'waiting';
    else if (im.status === 'done') stepText = 'done';
    else if (im.status === 'failed') stepText = `failed${im.error ? `: ${im.error}` : ''}`;
    else if (im.status === 'cancelled') stepText = 'cancelled';
    $('.image-step', item).textContent = ` — ${stepText}`;
  });

  const err = $('.job-error', li);
  const message = entry.cancelError || (job.status === 'failed' ? job.error || 'The job failed.' : '');
  err.textContent = message;
  err.hidden = !message;

  for (const im of job.images) {
    if (im && im.status === 'done' && im.url && !entry.reported.has(im.index)) {
      entry.reported.add(im.index);
      hooks.onImage(job, im);
    }
  }
  $('#queue-empty').hidden = entries.size > 0;
}

async function refresh(entry) {
  try {
    const raw = await getJson(`/jobs/${encodeURIComponent(entry.job.id)}`);
    mergeJob(entry.job, normaliseJob(raw.job || raw));
  } catch (e) {
    if (e.status === 404) {
      entry.job.status = 'failed';
      entry.job.error = 'This job no longer exists on the daemon.';
    }
  }
  update(entry);
}

// Follows a job until it is done, failed or cancelled.
async function follow(entry) {
  if (entry.following) return;
  entry.following = true;
  const { job } = entry;
  const path = `/jobs/${encodeURIComponent(job.id)}/events`;
  let failures = 0;
  try {
    while (isActive(job)) {
      if (openStreams < MAX_STREAMS) {
        openStreams += 1;
        const stop = new AbortController();
        try {
          await streamEvents(path, (type, data) => {
            const finished = applyEvent(job, type, data);
            update(entry);
            if (finished) stop.abort();
          }, { signal: stop.signal, onOpen: () => refresh(entry) });
          failures = 0;
        } catch (e) {
          failures += 1;
          if (e.status === 404) { await refresh(entry); break; }
        } finally {
          openStreams -= 1;
        }
      } else {
        await sleep(1000);
      }
      await refresh(entry);  // the final state (image URLs, errors) or a catch-up before retrying
      if (isActive(job)) await sleep(Math.min(5000, 250 * 2 ** failures));
    }
  } finally {
    entry.following = false;
  }
}

async function cancelJob(id) {
  const entry = entries.get(id);
  if (!entry) return;
  const button = $('.cancel', entry.el);
  button.disabled = true;
  entry.cancelError = '';
  try {
    const raw = await sendJson('DELETE', `/jobs/${encodeURIComponent(id)}`);
    if (raw && (raw.id || raw.job)) mergeJob(entry.job, normaliseJob(raw.job || raw));
    else await refresh(entry);
  } catch (e) {
    if (e.status === 409) await refresh(entry);  // it finished first: nothing to cancel
    else entry.cancelError = `Could not cancel: ${e.message}`;
  } finally {
    button.disabled = false;
  }
  update(entry);
  if (isActive(entry.job)) follow(entry);
}

// Keeps the list short: drops the oldest finished jobs beyond MAX_LISTED.
function trim() {
  if (entries.size <= MAX_LISTED) return;
  const items = [...$('#queue').children].reverse();
  for (const li of items) {
    if (entries.size <= MAX_LISTED) break;
    const entry = entries.get(li.dataset.jobId);
    if (entry && TERMINAL.has(entry.job.status)) {
      entries.delete(entry.job.id);
      li.remove();
    }
  }
}
