// The LoRA list of the generate form: the daemon's LoRAs (GET /loras) in a picker, each added
// one with a weight (slider and number, -2..2 on the slider, any value the daemon allows in the
// box). The form sends them as `loras: [{name, weight}]`. Runs on the page's JS thread.

import { getJson } from './api.js';

const $ = (sel, root = document) => root.querySelector(sel);

function row(name, weight) {
  const li = document.createElement('li');
  li.className = 'lora';
  li.dataset.name = name;
  const label = document.createElement('span');
  label.className = 'lora-name';
  label.textContent = name;
  const slider = document.createElement('input');
  Object.assign(slider, { type: 'range', min: '-2', max: '2', step: '0.05', value: String(weight) });
  slider.setAttribute('aria-label', `Weight of ${name}`);
  const number = document.createElement('input');
  Object.assign(number, { type: 'number', min: '-10', max: '10', step: '0.05', value: String(weight) });
  number.className = 'lora-weight';
  number.setAttribute('aria-label', `Weight of ${name} (number)`);
  slider.addEventListener('input', () => { number.value = slider.value; });
  number.addEventListener('input', () => { if (number.value !== '') slider.value = number.value; });
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'lora-remove';
  remove.textContent = 'Remove';
  remove.setAttribute('aria-label', `Remove ${name}`);
  remove.addEventListener('click', () => li.remove());
  li.append(label, slider, number, remove);
  return li;
}

export function addLora(name, weight = 1) {
  const list = $('#lora-list');
  const existing = [...list.children].find((li) => li.dataset.name === name);
  if (existing) {
    $('.lora-weight', existing).value = String(weight);
    return;
  }
  list.append(row(name, weight));
}

// [{name, weight}] in the order added; an empty weight box counts as 1.
export function loraRequest() {
  return [...$('#lora-list').children].map((li) => {
    const v = $('.lora-weight', li).value.trim();
    const n = Number(v);
    return { name: li.dataset.name, weight: v === '' || Number.isNaN(n) ? 1 : n };
  });
}

export async function loadLoras() {
  const pick = $('#lora-pick');
  let loras = [];
  try {
    const answer = await getJson('/loras');
    loras = answer.loras || [];
  } catch { /* an older daemon: no LoRA list */ }
  pick.replaceChildren();
  for (const l of loras) {
    const o = document.createElement('option');
    o.value = l.name;
    o.textContent = l.short_hash ? `${l.name} (${l.short_hash})` : l.name;
    pick.append(o);
  }
  $('#lora-empty').hidden = loras.length > 0;
  $('#lora-add-row').hidden = loras.length === 0;
}

export function initLoras() {
  $('#lora-add').addEventListener('click', () => {
    const name = $('#lora-pick').value;
    if (name) addLora(name, 1);
  });
}
