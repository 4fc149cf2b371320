// diffusiond web UI: the gallery of finished images and the viewer dialog (enlarge, download,
// copy the parameters, reuse the seed). Runs on the page's single JS thread.

import { imageUrl } from './api.js';
import { parametersText } from './jobs.js';

let hooks = { samplerLabel: (s) => s, onReuseSeed: () => {}, notify: () => {} };
const shown = new Set();  // "jobId/index" already in the gallery
let current = null;       // { job, im } shown in the viewer

const $ = (sel, root = document) => root.querySelector(sel);

export function initGallery(h) {
  hooks = { ...hooks, ...h };
  const viewer = $('#viewer');
  $('#viewer-close').addEventListener('click', () => viewer.close());
  // A click on the backdrop (outside the dialog's box) closes it too.
  viewer.addEventListener('click', (e) => { if (e.target === viewer) viewer.close(); });
  $('#viewer-copy').addEventListener('click', () => current && copyParameters(current.job, current.im));
  $('#viewer-reuse').addEventListener('click', () => {
    if (!current) return;
    viewer.close();
    hooks.onReuseSeed(current.im.seed);
  });
}

function fileName(job, im) {
  return `diffusiond-${job.id}-${im.index}${im.seed ? `-seed${im.seed}` : ''}.png`;
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context, or no permission: fall back to a selected textarea.
    const area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.style.position = 'fixed';
    area.style.opacity = '0';
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    area.remove();
    return ok;
  }
}

async function copyParameters(job, im) {
  const ok = await copyText(parametersText(job, im, hooks.samplerLabel));
  hooks.notify(ok ? 'Parameters copied.' : 'Could not copy: your browser refused the clipboard.');
}

function button(text, label, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.setAttribute('aria-label', label);
  b.addEventListener('click', onClick);
  return b;
}

// Adds image `im` of `job` to the gallery (once), newest jobs first.
export async function addImage(job, im) {
  const key = `${job.id}/${im.index}`;
  if (shown.has(key)) return;
  shown.add(key);
  const prompt = im.prompt || job.prompts[0] || '';
  const card = document.createElement('li');
  card.className = 'card';
  card.dataset.key = key;
  card.dataset.order = String(job.created_ms * 1000 - im.index);

  const img = document.createElement('img');
  img.alt = `${prompt} (seed ${im.seed})`;
  img.width = job.width || 512;
  img.height = job.height || 512;
  const thumb = document.createElement('button');
  thumb.type = 'button';
  thumb.className = 'thumb';
  thumb.setAttribute('aria-label', `Enlarge image ${im.index + 1} of “${prompt}”`);
  thumb.append(img);
  thumb.addEventListener('click', () => openViewer(job, im, img.src));

  const caption = document.createElement('p');
  caption.className = 'caption';
  caption.textContent = prompt;
  caption.title = prompt;
  const meta = document.createElement('p');
  meta.className = 'meta';
  meta.textContent = [`seed ${im.seed}`, job.width && `${job.width}×${job.height}`, im.device]
    .filter(Boolean).join(' · ');

  const download = document.createElement('a');
  download.className = 'button';
  download.textContent = 'Download';
  download.download = fileName(job, im);
  download.setAttribute('aria-label', `Download image ${im.index + 1} of “${prompt}”`);
  const actions = document.createElement('div');
  actions.className = 'card-actions';
  actions.append(download,
    button('Copy parameters', `Copy the parameters of image ${im.index + 1}`,
           () => copyParameters(job, im)),
    button('Reuse seed', `Reuse seed ${im.seed}`, () => hooks.onReuseSeed(im.seed)));
  card.append(thumb, caption, meta, actions);

  const gallery = $('#gallery');
  const order = Number(card.dataset.order);
  const before = [...gallery.children].find((c) => Number(c.dataset.order) < order);
  gallery.insertBefore(card, before || null);
  $('#gallery-empty').hidden = true;

  try {
    const src = await imageUrl(im.url);
    img.src = src;
    download.href = src;
  } catch (e) {
    card.classList.add('broken');
    meta.textContent = `Could not load the image: ${e.message}`;
  }
}

function openViewer(job, im, src) {
  current = { job, im };
  const img = $('#viewer-image');
  img.src = src;
  img.alt = `${im.prompt || job.prompts[0] || ''} (seed ${im.seed})`;
  $('#viewer-params').textContent = parametersText(job, im, hooks.samplerLabel);
  const download = $('#viewer-download');
  download.href = src;
  download.download = fileName(job, im);
  $('#viewer-reuse').textContent = `Reuse seed ${im.seed}`;
  $('#viewer').showModal();
}
