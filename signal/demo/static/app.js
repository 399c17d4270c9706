// The demo page: join form, call state, channels heard, people, bites.
import { Call, randomHex } from './call.js';

const SLOTS = 3;
const SPEAKING_LEVEL = 0.01; // linear audio level counted as speech (about -40 dBFS)
const HANGOVER_MS = 600;     // speech continues this long after the level drops
const MAX_BITES_SHOWN = 100;

// Identity: random per page load. The display name is for display only.
const me = { userid: 'u-' + randomHex(16), clientid: 'c-' + randomHex(8) };

const $ = (id) => document.getElementById(id);
const ui = {
  form: $('join-form'), conversation: $('conversation'), name: $('name'),
  join: $('join'), leave: $('leave'), processing: $('processing'),
  status: $('status-text'), error: $('error'), mic: $('mic-level'),
  invite: $('invite'), inviteLink: $('invite-link'), copy: $('copy'), ids: $('ids'),
  slots: $('slots'), unmute: $('unmute'),
  members: $('members'), memberCount: $('member-count'),
  bites: $('bites'), biteCount: $('bite-count'), feed: $('feed'),
  mute: $('mute'), micSelect: $('mic-select'), volume: $('volume'), volumeValue: $('volume-value'),
};

let call = null;
let events = null;
let conversation = '';
let members = [];
let bitesShown = 0;
let poll = null;
let speaking = { me: false, until: 0 };
let muted = false;
let slotUsers = [];          // whose audio each channel carries, from the "slots" events
const knownNames = new Map(); // user -> display name, kept after they leave
const slotViews = [];

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

const PALETTE = ['#5b5bd6', '#d6409f', '#12a594', '#e5484d', '#f76b15', '#0090ff', '#8e4ec6', '#46a758'];

function color(s) {
  let h = 0;
  for (const ch of s) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function avatar(name, user) {
  const initial = (name || '?').trim().charAt(0).toUpperCase() || '?';
  const a = el('span', { class: 'avatar', 'aria-hidden': 'true' }, initial);
  a.style.background = color(user);
  return a;
}

function nameOf(user) {
  if (user === me.userid) return `${ui.name.value.trim() || 'You'} (you)`;
  const m = members.find((x) => x.user === user);
  if (m) return m.name;
  return knownNames.get(user) || user.slice(0, 10) + '…';
}

// ---- prefill from the URL and storage --------------------------------------

const params = new URLSearchParams(location.search);
ui.conversation.value = params.get('conversation') || '';
ui.name.value = params.get('name') || localStorage.getItem('beep-demo-name') || '';
if (params.get('processing') === '0') ui.processing.checked = false;
ui.ids.textContent = `This page is user ${me.userid}, device ${me.clientid}.`;

// ---- channels ---------------------------------------------------------------

function buildSlots() {
  ui.slots.replaceChildren();
  slotViews.length = 0;
  for (let i = 0; i < SLOTS; i++) {
    const bar = el('span', { class: 'bar' });
    const state = el('span', { class: 'slot-state' }, 'idle');
    const audio = el('audio', { autoplay: true });
    audio.volume = Number(ui.volume.value);
    const name = el('span', { class: 'slot-name', title: `Channel ${i + 1}` }, `Channel ${i + 1}`);
    const card = el('div', { class: 'slot', dataset: { index: String(i), active: 'false', speaking: 'false', user: '' } },
      name,
      el('span', { class: 'meter' }, bar),
      state, audio);
    ui.slots.append(card);
    slotViews.push({ card, name, bar, state, audio, until: 0, packets: 0 });
  }
}

// Labels each channel with the person it carries now (the "slots" events).
function renderSlotNames() {
  slotViews.forEach((v, i) => {
    const user = slotUsers[i] || '';
    v.card.dataset.user = user;
    v.name.textContent = user ? nameOf(user) : `Channel ${i + 1}`;
  });
}

// ---- output volume, microphone, mute -----------------------------------------

const savedVolume = localStorage.getItem('beep-demo-volume');
if (savedVolume !== null && !Number.isNaN(Number(savedVolume))) ui.volume.value = savedVolume;
function applyVolume() {
  const v = Number(ui.volume.value);
  ui.volumeValue.textContent = `${Math.round(v * 100)}%`;
  for (const s of slotViews) s.audio.volume = v;
  localStorage.setItem('beep-demo-volume', String(v));
}
ui.volume.addEventListener('input', applyVolume);
buildSlots();
applyVolume();

async function listMicrophones() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  let devices = [];
  try { devices = await navigator.mediaDevices.enumerateDevices(); } catch (_) { return; }
  const mics = devices.filter((d) => d.kind === 'audioinput' && d.deviceId && d.deviceId !== 'default');
  const chosen = ui.micSelect.value || localStorage.getItem('beep-demo-mic') || '';
  ui.micSelect.replaceChildren(el('option', { value: '' }, 'Default microphone'),
    ...mics.map((d, i) => el('option', { value: d.deviceId }, d.label || `Microphone ${i + 1}`)));
  ui.micSelect.value = mics.some((d) => d.deviceId === chosen) ? chosen : '';
}
if (navigator.mediaDevices) navigator.mediaDevices.addEventListener('devicechange', listMicrophones);
listMicrophones();

ui.micSelect.addEventListener('change', async () => {
  const id = ui.micSelect.value;
  localStorage.setItem('beep-demo-mic', id);
  if (!call) return;
  try {
    await call.switchMicrophone(id);
  } catch (err) {
    ui.error.hidden = false;
    ui.error.textContent = `Could not switch the microphone: ${err.message}`;
  }
});

function setMuted(on) {
  muted = on;
  if (call) call.setMuted(on);
  ui.mute.textContent = on ? 'Unmute' : 'Mute';
  ui.mute.setAttribute('aria-pressed', String(on));
  document.body.dataset.muted = String(on);
  if (on) { speaking.until = 0; setSpeaking(false); }
}
ui.mute.addEventListener('click', () => setMuted(!muted));

function onTrack({ index, track }) {
  const v = slotViews[index];
  if (!v) return;
  v.audio.srcObject = new MediaStream([track]);
  v.audio.play().catch(() => { ui.unmute.hidden = false; });
}

ui.unmute.addEventListener('click', () => {
  for (const v of slotViews) v.audio.play().catch(() => {});
  ui.unmute.hidden = true;
});

// Meter width for a linear level: -60 dBFS and below is empty, 0 dBFS full.
function meterWidth(level) {
  if (!(level > 0)) return '0%';
  const db = 20 * Math.log10(level);
  return `${Math.max(0, Math.min(100, Math.round((db + 60) / 60 * 100)))}%`;
}

async function updateLevels() {
  if (!call) return;
  let l;
  try { l = await call.levels(); } catch (_) { return; }
  const now = performance.now();
  ui.mic.style.width = muted ? '0' : meterWidth(l.mic);
  if (!muted && l.mic > SPEAKING_LEVEL * 2) speaking.until = now + HANGOVER_MS;
  setSpeaking(now < speaking.until);

  l.slots.forEach((s, i) => {
    const v = slotViews[i];
    if (!v) return;
    v.bar.style.width = meterWidth(s.level);
    const flowing = s.packets > v.packets;
    v.packets = s.packets;
    if (s.level > SPEAKING_LEVEL) v.until = now + HANGOVER_MS;
    const talking = flowing && now < v.until;
    v.card.dataset.active = String(flowing);
    v.card.dataset.speaking = String(talking);
    v.state.textContent = talking ? 'speaking' : flowing ? 'quiet' : 'idle';
  });
}

function resetLevels() {
  ui.mic.style.width = '0';
  slotUsers = [];
  renderSlotNames();
  for (const v of slotViews) {
    v.audio.srcObject = null;
    v.bar.style.width = '0';
    v.packets = 0;
    v.until = 0;
    v.card.dataset.active = 'false';
    v.card.dataset.speaking = 'false';
    v.state.textContent = 'idle';
  }
}

// ---- people -------------------------------------------------------------------

function setSpeaking(now) {
  if (now === speaking.me) return;
  speaking.me = now;
  renderMembers();
  if (!events || !conversation) return;
  fetch('/demo/speaking', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ conversation, user: me.userid, client: me.clientid, speaking: now }),
  }).catch(() => {});
}

function renderMembers() {
  if (!conversation) {
    ui.members.replaceChildren(el('li', { class: 'empty' }, 'Join to see who is here.'));
    ui.memberCount.textContent = '';
    return;
  }
  const list = members.length ? members : [];
  ui.memberCount.textContent = list.length ? String(list.length) : '';
  if (!list.length) {
    ui.members.replaceChildren(el('li', { class: 'empty' }, 'Nobody here yet.'));
    return;
  }
  ui.members.replaceChildren(...list.map((m) => {
    const mine = m.user === me.userid && m.client === me.clientid;
    const talking = mine ? speaking.me : m.speaking;
    return el('li', { class: 'member', dataset: { user: m.user, speaking: String(talking), me: String(mine) } },
      avatar(m.name, m.user),
      el('span', { class: 'member-name', title: `${m.user} · ${m.client}` }, m.name, mine ? el('span', { class: 'muted' }, ' (you)') : null),
      el('span', { class: 'talk', 'aria-label': talking ? 'speaking' : 'quiet' },
        el('i'), el('i'), el('i'), el('span', { class: 'talk-text' }, talking ? 'speaking' : '')));
  }));
}

// ---- bites -------------------------------------------------------------------

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

// Seconds as "0.6 s" under a minute, else "m:ss". (The browser's own audio
// controls show whole seconds: a bite under a second read "0:00 / 0:00".)
function seconds(s) {
  if (!(s >= 0) || !Number.isFinite(s)) return '–';
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
}

// A compact player: play/pause, progress, time. The bite's duration comes
// from the feed until the audio's own metadata is loaded.
function player(b) {
  const audio = el('audio', { preload: 'metadata', src: b.url });
  const fallback = b.duration_ms / 1000;
  const length = () => (Number.isFinite(audio.duration) && audio.duration > 0 ? audio.duration : fallback);
  const btn = el('button', { type: 'button', class: 'play', 'aria-label': 'Play' }, '▶');
  const bar = el('span', { class: 'bar' });
  const time = el('span', { class: 'bite-time' }, seconds(fallback));
  const box = el('div', { class: 'player', dataset: { state: 'idle' } }, btn, el('span', { class: 'progress' }, bar), time, audio);
  const show = () => {
    const d = length();
    bar.style.width = `${Math.min(100, (audio.currentTime / d) * 100)}%`;
    time.textContent = audio.currentTime > 0 ? `${seconds(audio.currentTime)} / ${seconds(d)}` : seconds(d);
  };
  btn.addEventListener('click', () => {
    if (audio.paused) {
      for (const other of ui.bites.querySelectorAll('.player audio')) if (other !== audio) other.pause();
      audio.play().catch((err) => { box.dataset.state = 'error'; btn.title = err.message; });
    } else {
      audio.pause();
    }
  });
  audio.addEventListener('play', () => { box.dataset.state = 'playing'; btn.textContent = '❚❚'; btn.setAttribute('aria-label', 'Pause'); });
  audio.addEventListener('pause', () => { if (box.dataset.state === 'playing') box.dataset.state = 'paused'; btn.textContent = '▶'; btn.setAttribute('aria-label', 'Play'); });
  audio.addEventListener('ended', () => { box.dataset.state = 'ended'; audio.currentTime = 0; show(); });
  audio.addEventListener('timeupdate', show);
  audio.addEventListener('loadedmetadata', show);
  audio.addEventListener('error', () => { box.dataset.state = 'error'; time.textContent = 'unplayable'; });
  return box;
}

function addBite(b) {
  if (ui.bites.querySelector(`[data-id="${b.id}"]`)) return;
  const empty = ui.bites.querySelector('.empty');
  if (empty) empty.remove();
  if (b.name && b.user !== me.userid) knownNames.set(b.user, b.name);
  const name = nameOf(b.user);
  const li = el('li', { class: 'bite', dataset: { id: String(b.id), user: b.user, seq: String(b.seq) } },
    avatar(name, b.user),
    el('div', { class: 'bite-meta' },
      el('span', { class: 'bite-who', title: `${b.user} · ${b.client}` }, name),
      el('span', { class: 'muted' }, `${clock(b.start_ms)} · ${(b.duration_ms / 1000).toFixed(1)} s · #${b.seq}`)),
    player(b),
    el('a', { class: 'download', href: b.url, download: `bite-${b.id}.ogg`, title: 'Download the Ogg Opus file' }, '.ogg'));
  ui.bites.prepend(li);
  bitesShown++;
  while (ui.bites.children.length > MAX_BITES_SHOWN) ui.bites.lastElementChild.remove();
  ui.biteCount.textContent = String(bitesShown);
}

function clearBites() {
  bitesShown = 0;
  ui.biteCount.textContent = '';
  ui.bites.replaceChildren(el('li', { class: 'empty' }, 'No bites yet. Say something!'));
}

function openEvents() {
  const q = new URLSearchParams({
    conversation, user: me.userid, client: me.clientid, name: ui.name.value.trim(),
  });
  events = new EventSource(`/demo/events?${q}`);
  events.addEventListener('bite', (e) => addBite(JSON.parse(e.data)));
  events.addEventListener('slots', (e) => {
    slotUsers = JSON.parse(e.data) || [];
    renderSlotNames();
  });
  events.addEventListener('members', (e) => {
    members = JSON.parse(e.data) || [];
    for (const m of members) if (m.user !== me.userid) knownNames.set(m.user, m.name);
    renderMembers();
    renderSlotNames();
    // Names may have arrived after bites.
    for (const w of ui.bites.querySelectorAll('.bite')) {
      const who = w.querySelector('.bite-who');
      if (who) who.textContent = nameOf(w.dataset.user);
    }
  });
  events.onopen = () => { ui.feed.hidden = false; ui.feed.textContent = 'live'; ui.feed.className = 'feed live'; };
  events.onerror = () => { ui.feed.hidden = false; ui.feed.textContent = 'reconnecting…'; ui.feed.className = 'feed'; };
}

// ---- join / leave --------------------------------------------------------------

function showState(state, text) {
  document.body.dataset.state = state;
  ui.status.textContent = text;
  const inCall = !['idle', 'failed', 'closed'].includes(state);
  ui.join.hidden = inCall;
  ui.leave.hidden = !inCall && state !== 'failed';
  ui.conversation.disabled = inCall;
  ui.name.disabled = inCall;
  ui.processing.disabled = inCall;
  ui.mute.disabled = !inCall;
  if (state === 'connected') listMicrophones(); // labels are known once the microphone is allowed
  if (state === 'failed') {
    ui.error.hidden = false;
    ui.error.textContent = `${text}. Press Leave, then Join to try again.`;
    ui.join.hidden = true;
  }
}

function start() {
  conversation = ui.conversation.value.trim();
  const name = ui.name.value.trim();
  if (!conversation || !name) return;
  localStorage.setItem('beep-demo-name', name);
  ui.error.hidden = true;
  members = [];
  clearBites();
  renderMembers();
  resetLevels();

  // The invite is this page as it was loaded (its scheme, host and port),
  // so that it works from wherever this page works.
  const url = new URL(location.pathname, location.origin);
  url.search = new URLSearchParams({ conversation }).toString();
  ui.inviteLink.href = url.toString();
  ui.inviteLink.textContent = url.toString();
  ui.invite.hidden = false;
  history.replaceState(null, '', `?${new URLSearchParams({ conversation, name })}`);

  openEvents();
  call = new Call({ conversation, ...me, slots: SLOTS, processing: ui.processing.checked, deviceId: ui.micSelect.value, muted });
  call.addEventListener('state', (e) => showState(e.detail.state, e.detail.text));
  call.addEventListener('track', (e) => onTrack(e.detail));
  poll = setInterval(updateLevels, 200);
  call.start();
}

function stop() {
  if (call) call.close();
  call = null;
  if (events) events.close();
  events = null;
  clearInterval(poll);
  poll = null;
  speaking = { me: false, until: 0 };
  setMuted(false);
  conversation = '';
  members = [];
  renderMembers();
  resetLevels();
  ui.feed.hidden = true;
  ui.error.hidden = true;
  showState('idle', 'Not connected');
}

ui.form.addEventListener('submit', (e) => { e.preventDefault(); start(); });
ui.leave.addEventListener('click', stop);
ui.copy.addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText(ui.inviteLink.href);
    ui.copy.textContent = 'Copied';
  } catch (_) {
    ui.copy.textContent = 'Copy failed';
  }
  setTimeout(() => { ui.copy.textContent = 'Copy link'; }, 1500);
});
window.addEventListener('pagehide', () => { if (call) call.close(); });

// For people poking around in the console, and for the end-to-end tests.
window.beepDemo = { me, get call() { return call; } };
