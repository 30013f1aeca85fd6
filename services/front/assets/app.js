// The airq dashboard: reads the front service's API (every URL relative to the page, so it works under any path
// prefix) and draws its charts as SVG. Views: #/ (stations), #/station/CODE, #/compare, #/ops, #/api.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const HOUR = 3600;
const DAY = 24 * HOUR;
const PALETTE = ['#1f6feb', '#d1495b', '#2a9d8f', '#e9a03b', '#6f42c1', '#3d5a80', '#8d6e63', '#00897b', '#c2185b',
  '#7cb342', '#5c6bc0', '#f4511e'];

// ---- small helpers -------------------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') query.set(k, v);
  }
  const url = 'api/' + path + (query.toString() ? '?' + query : '');
  let response;
  try {
    response = await fetch(url, { headers: { Accept: 'application/json' } });
  } catch (e) {
    throw new ApiFailure(0, 'network', 'The server could not be reached: ' + e.message);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiFailure(response.status, error.code || 'http_' + response.status,
      error.message || 'The server answered ' + response.status);
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'style') node.style.cssText = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    // Through the CSSOM: a `style` attribute is inline style, which the page's Content-Security-Policy refuses.
    else if (k === 'style') node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pad = (n) => String(n).padStart(2, '0');
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function dateOnly(seconds) {
  const d = new Date(seconds * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

function dateTime(seconds) {
  const d = new Date(seconds * 1000);
  return `${dateOnly(seconds)} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
}

const seconds = (rfc3339) => Math.floor(Date.parse(rfc3339) / 1000);

function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function bucketLabel(bucketSeconds) {
  if (bucketSeconds === HOUR) return 'Hourly values';
  if (bucketSeconds % DAY === 0) return bucketSeconds === DAY ? 'Daily mean' : `Mean per ${bucketSeconds / DAY} days`;
  return `Mean per ${bucketSeconds / HOUR} h`;
}

// How long ago `rfc3339` was, in words (the data may be years old: the Beijing files end in 2017).
function age(rfc3339) {
  const s = Date.now() / 1000 - seconds(rfc3339);
  if (s < 2 * HOUR) return 'less than 2 hours ago';
  if (s < 2 * DAY) return `${Math.round(s / HOUR)} hours ago`;
  if (s < 60 * DAY) return `${Math.round(s / DAY)} days ago`;
  if (s < 730 * DAY) return `${Math.round(s / (30.44 * DAY))} months ago`;
  return `${Math.floor(s / (365.25 * DAY))} years ago`;
}

function unitLabel(unit) {
  return unit === 'ug/m3' ? 'µg/m³' : unit;
}

function isDark(hex) {
  const n = parseInt(hex.slice(1), 16);
  const [r, g, b] = [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  return 0.299 * r + 0.587 * g + 0.114 * b < 140;
}

function badge(category) {
  if (!category) return el('span', { class: 'badge' }, 'no category');
  return el('span', { class: 'badge' + (isDark(category.color) ? ' dark' : ''), style: `--cat:${category.color}` },
    category.label);
}

function notice(text, kind) {
  return el('p', { class: 'notice' + (kind === 'error' ? ' error' : ''), role: 'status' }, text);
}

// Says how old the newest data is when it is more than two days old: a category is that hour's, not today's.
function ageNotice(newestRfc) {
  if (!newestRfc || Date.now() / 1000 - seconds(newestRfc) < 2 * DAY) return null;
  const n = notice(`The newest data is from ${dateTime(seconds(newestRfc))} UTC, ${age(newestRfc)}: values and `
    + 'categories describe that hour, not now. A load of newer data (an EtlSchedule) brings them up to date.');
  n.classList.add('data-age');
  return n;
}

// ---- routing -------------------------------------------------------------------------------------------------

function parseHash() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || '') };
}

function link(parts, params) {
  const path = '#/' + parts.map(encodeURIComponent).join('/');
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v) query.set(k, v);
  return query.toString() ? path + '?' + query : path;
}

let renderToken = 0;
let stationsCache = null;

async function stations() {
  if (!stationsCache || Date.now() - stationsCache.at > 60000) {
    stationsCache = { at: Date.now(), body: await api('stations') };
  }
  return stationsCache.body;
}

async function route() {
  const token = ++renderToken;
  const { parts, params } = parseHash();
  const view = document.getElementById('view');
  const section = parts[0] || 'overview';
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.nav === (section === 'station' ? 'overview' : section));
  }
  const target = el('div', { class: 'view', 'data-view': section });
  let shown = false;
  const show = () => {
    shown = true;
    if (token === renderToken) view.replaceChildren(target);
  };
  // A call that takes time says so (the previous page stays until then, so quick answers do not flicker).
  setTimeout(() => {
    if (!shown && token === renderToken) {
      view.replaceChildren(el('p', { class: 'loading', role: 'status' }, 'Loading…'));
    }
  }, 250);
  try {
    if (section === 'station' && parts[1]) await stationView(target, parts[1], params, show);
    else if (section === 'compare') await compareView(target, params);
    else if (section === 'ops') await opsView(target);
    else if (section === 'api') await apiView(target);
    else await overview(target, params);
  } catch (e) {
    target.append(notice(e.message, 'error'));
  }
  show();
  document.body.dataset.ready = String(token);
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', route);

// Calls `draw(width)` once `container` is on the page with a width, and again whenever its width changes: drawings
// are made at the size they are shown, never scaled (text stays at the stylesheet's size on a phone and a desktop).
function sized(container, draw) {
  let drawn = 0;
  new ResizeObserver(() => {
    const width = Math.floor(container.clientWidth);
    if (width > 0 && width !== drawn) {
      drawn = width;
      draw(width);
    }
  }).observe(container);
  return container;
}

// A date as ISO text (YYYY-MM-DD), as every date on the page is written, whatever the browser's locale.
function dateInput(id, value) {
  return el('input', { type: 'text', id, name: id, value, inputmode: 'numeric', placeholder: 'YYYY-MM-DD',
    pattern: '\\d{4}-\\d{2}-\\d{2}', title: 'a date as YYYY-MM-DD (UTC)', size: 10, autocomplete: 'off' });
}

function pollutantSelect(list, current, onChange) {
  return el('label', {}, 'Pollutant',
    el('select', { id: 'pollutant', name: 'pollutant', onchange: (e) => onChange(e.target.value) },
      list.map((p) => el('option', { value: p.code, selected: p.code === current }, p.label))));
}

// ---- overview ------------------------------------------------------------------------------------------------

async function overview(target, params) {
  const data = await stations();
  const pollutant = params.get('pollutant') || 'pm25';
  const info = data.pollutants.find((p) => p.code === pollutant) || data.pollutants[0];
  target.append(el('h1', {}, 'Stations'));
  target.append(el('div', { class: 'controls' },
    pollutantSelect(data.pollutants, info.code, (code) => { location.hash = link([], { pollutant: code }); })));
  if (data.stations.length === 0) {
    target.append(notice('No station has data yet. Apply an EtlSchedule (see examples/) or start a load; ' +
      'stations appear here as soon as their first rows are stored.'));
    return;
  }
  const newest = data.stations.flatMap((s) => Object.values(s.pollutants).map((p) => p.last)).sort().pop();
  const old = ageNotice(newest);
  if (old) target.append(old);
  target.append(el('div', { class: 'legend' }, data.categories.map((c) =>
    el('span', {}, el('i', { class: 'swatch', style: `background:${c.color}` }), c.label))));
  // The map needs coordinates (OpenAQ and Open-Meteo give them; the Beijing files do not): without any, the grid.
  const located = data.stations.some((s) => s.latitude !== null && s.longitude !== null);
  const layout = el('div', { class: located ? 'layout' : '' });
  if (located) {
    const map = el('div', { class: 'map-drawing' });
    layout.append(el('div', { class: 'panel map' }, sized(map, (width) => map.replaceChildren(stationMap(data.stations, info, width)))));
  }
  const grid = el('div', { class: 'grid' });
  for (const s of data.stations) {
    const latest = s.pollutants[info.code];
    const color = latest && latest.category ? latest.category.color : '#ccc';
    grid.append(el('a', {
      class: 'station-card', href: link(['station', s.code], { pollutant: info.code }), style: `--cat:${color}`,
      'data-station': s.code,
    },
    el('div', { class: 'name' }, s.name),
    latest
      ? [el('div', { class: 'value' }, formatNumber(latest.value), ' ', el('small', {}, unitLabel(latest.unit))),
        badge(latest.category), el('div', { class: 'meta' }, 'at ', dateTime(seconds(latest.last)), ' UTC')]
      : el('div', { class: 'meta' }, `no ${info.label} values`)));
  }
  layout.append(grid);
  target.append(layout);
}

// Stations placed by longitude and latitude (an equirectangular view of their bounding box).
function stationMap(list, info, width) {
  const located = list.filter((s) => s.latitude !== null && s.longitude !== null);
  const height = Math.round(Math.min(Math.max(width * 0.75, 220), 480)), margin = 30;
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `Map of the stations by ${info.label}` });
  root.append(svg('rect', { class: 'frame', x: 0, y: 0, width, height, rx: 8 }));
  if (located.length === 0) {
    root.append(svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle' }, 'No station has coordinates'));
    return root;
  }
  const lons = located.map((s) => s.longitude), lats = located.map((s) => s.latitude);
  const [x0, x1] = [Math.min(...lons), Math.max(...lons)];
  const [y0, y1] = [Math.min(...lats), Math.max(...lats)];
  const cos = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
  const spanX = Math.max((x1 - x0) * cos, 1e-3), spanY = Math.max(y1 - y0, 1e-3);
  const scale = Math.min((width - 2 * margin) / spanX, (height - 2 * margin) / spanY);
  const cx = (lon) => width / 2 + ((lon - (x0 + x1) / 2) * cos) * scale;
  const cy = (lat) => height / 2 - (lat - (y0 + y1) / 2) * scale;
  for (const s of located) {
    const latest = s.pollutants[info.code];
    const color = latest && latest.category ? latest.category.color : '#bbb';
    const go = () => { location.hash = link(['station', s.code], { pollutant: info.code }); };
    const dot = svg('circle', { class: 'dot', cx: cx(s.longitude), cy: cy(s.latitude), r: 9, fill: color, onclick: go,
      'data-station': s.code },
    svg('title', {}, `${s.name}: ${latest ? formatNumber(latest.value) + ' ' + unitLabel(latest.unit) : 'no value'}`));
    root.append(dot, svg('text', { x: cx(s.longitude) + 11, y: cy(s.latitude) + 4 }, s.name));
  }
  return root;
}

// ---- the chart -----------------------------------------------------------------------------------------------

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const fraction = raw / power;
  return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
}

const TIME_STEPS = [HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY,
  182 * DAY, 365 * DAY];

function timeTicks(t0, t1, maxTicks) {
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= maxTicks) || 365 * DAY;
  const ticks = [];
  if (step >= 30 * DAY) {
    // Month starts, every 1, 3, 6 or 12 months.
    const months = Math.round(step / (30 * DAY));
    const every = months >= 12 ? 12 : months >= 6 ? 6 : months >= 3 ? 3 : 1;
    const d = new Date(t0 * 1000);
    let y = d.getUTCFullYear(), m = d.getUTCMonth();
    m = Math.ceil(m / every) * every;
    for (;;) {
      if (m >= 12) { y += Math.floor(m / 12); m %= 12; }
      const t = Date.UTC(y, m, 1) / 1000;
      if (t > t1) break;
      if (t >= t0) ticks.push({ t, label: every === 12 ? String(y) : `${MONTHS[m]} ${y}` });
      m += every;
    }
  } else {
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const d = new Date(t * 1000);
      const label = step >= DAY ? `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`
        : d.getUTCHours() === 0 ? `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}` : `${pad(d.getUTCHours())}:00`;
      ticks.push({ t, label });
    }
  }
  return ticks;
}

// Path of a line through `points` ([t, v] with v null for a gap): a new segment after each gap; a lone point
// is drawn as a dot.
function linePath(points, x, y) {
  let d = '', open = false, previous = null;
  for (const [t, v] of points) {
    if (v === null || v === undefined) { open = false; continue; }
    if (!open) {
      d += `M${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      open = true;
      previous = d.length;
    } else {
      d += `L${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      previous = null;
    }
    if (previous !== null) d += 'l0.01,0';
  }
  return d;
}

// Path of a band between `lower` and `upper` ([t, lo, hi]), one closed shape per run without gaps.
function bandPath(points, x, y) {
  let d = '';
  let run = [];
  const flush = () => {
    if (run.length === 1) run = [[run[0][0] - 0.3 * HOUR, run[0][1], run[0][2]], [run[0][0] + 0.3 * HOUR, run[0][1], run[0][2]]];
    if (run.length >= 2) {
      d += 'M' + run.map(([t, , hi]) => `${x(t).toFixed(1)},${y(hi).toFixed(1)}`).join('L');
      d += 'L' + run.slice().reverse().map(([t, lo]) => `${x(t).toFixed(1)},${y(lo).toFixed(1)}`).join('L') + 'Z';
    }
    run = [];
  };
  for (const p of points) {
    if (p[1] === null || p[2] === null || p[1] === undefined || p[2] === undefined) flush();
    else run.push(p);
  }
  flush();
  return d;
}

// Draws `layers` into `container` at its width, and again when that changes. A layer is
// {kind: 'line'|'band', cls, label, color, points} with points [t, v] or [t, lo, hi].
function chart(container, spec) {
  container.classList.add('chart');
  return sized(container, (width) => drawChart(container, spec, width));
}

function drawChart(container, { layers, unit, domain, marker }, width) {
  const height = Math.round(Math.min(Math.max(width * 0.45, 240), 440));
  const m = { left: 48, right: 14, top: 12, bottom: 30 };
  let t0 = Infinity, t1 = -Infinity, vmax = 0;
  for (const layer of layers) {
    for (const p of layer.points) {
      t0 = Math.min(t0, p[0]); t1 = Math.max(t1, p[0]);
      for (const v of p.slice(1)) if (v !== null && v !== undefined) vmax = Math.max(vmax, v);
    }
  }
  if (domain) { t0 = domain[0]; t1 = domain[1]; }
  if (!(t1 > t0)) { t1 = t0 + HOUR; }
  const step = niceStep(vmax || 1, 5);
  const top = Math.max(step, Math.ceil((vmax || 1) / step) * step);
  const x = (t) => m.left + ((t - t0) / (t1 - t0)) * (width - m.left - m.right);
  const y = (v) => height - m.bottom - (v / top) * (height - m.top - m.bottom);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'chart' });
  const axis = svg('g', { class: 'axis' });
  for (let v = 0; v <= top + step / 2; v += step) {
    axis.append(svg('line', { class: 'grid-line', x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }));
    axis.append(svg('text', { x: m.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, Number(v.toPrecision(6)).toLocaleString('en')));
  }
  axis.append(svg('text', { x: m.left, y: m.top - 2, 'text-anchor': 'start' }, unitLabel(unit || '')));
  for (const tick of timeTicks(t0, t1, Math.floor((width - m.left - m.right) / 90))) {
    axis.append(svg('line', { class: 'axis-line', x1: x(tick.t), x2: x(tick.t), y1: height - m.bottom, y2: height - m.bottom + 4 }));
    axis.append(svg('text', { x: x(tick.t), y: height - m.bottom + 16, 'text-anchor': 'middle' }, tick.label));
  }
  axis.append(svg('line', { class: 'axis-line', x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom }));
  root.append(axis);
  const clip = 'clip-' + Math.random().toString(36).slice(2);
  root.append(svg('clipPath', { id: clip }, svg('rect', { x: m.left, y: m.top - 2, width: width - m.left - m.right, height: height - m.top - m.bottom + 4 })));
  const plot = svg('g', { 'clip-path': `url(#${clip})` });
  for (const layer of layers) {
    const d = layer.kind === 'band' ? bandPath(layer.points, x, y) : linePath(layer.points, x, y);
    plot.append(svg('path', { class: layer.cls, d, style: layer.color ? (layer.kind === 'band' ? `fill:${layer.color}` : `stroke:${layer.color}`) : null,
      'data-label': layer.label }));
  }
  if (marker) {
    plot.append(svg('line', { class: 'now-line', x1: x(marker), x2: x(marker), y1: m.top, y2: height - m.bottom }));
  }
  root.append(plot);
  // Hover: the values of every layer at the nearest time.
  const hover = svg('line', { class: 'hover-line', y1: m.top, y2: height - m.bottom, visibility: 'hidden' });
  root.append(hover);
  const tip = el('div', { class: 'tip', hidden: true });
  const overlay = svg('rect', { x: m.left, y: m.top, width: width - m.left - m.right, height: height - m.top - m.bottom,
    fill: 'transparent' });
  const times = [...new Set(layers.flatMap((l) => l.points.map((p) => p[0])))].sort((a, b) => a - b);
  overlay.addEventListener('mousemove', (event) => {
    const box = root.getBoundingClientRect();
    const scale = width / box.width;
    const t = t0 + (((event.clientX - box.left) * scale - m.left) / (width - m.left - m.right)) * (t1 - t0);
    let nearest = times[0];
    for (const candidate of times) if (Math.abs(candidate - t) < Math.abs(nearest - t)) nearest = candidate;
    const lines = [dateTime(nearest) + ' UTC'];
    for (const layer of layers) {
      const p = layer.points.find((q) => q[0] === nearest);
      if (!p || p[1] === null || p[1] === undefined) continue;
      lines.push(layer.kind === 'band' ? `${layer.label}: ${formatNumber(p[1])}–${formatNumber(p[2])}`
        : `${layer.label}: ${formatNumber(p[1])}`);
    }
    hover.setAttribute('x1', x(nearest)); hover.setAttribute('x2', x(nearest));
    hover.setAttribute('visibility', 'visible');
    tip.replaceChildren(...lines.map((line) => el('div', {}, line)));
    tip.hidden = false;
    tip.style.left = `${x(nearest) / scale}px`;
    tip.style.top = `${m.top / scale + 10}px`;
  });
  overlay.addEventListener('mouseleave', () => { hover.setAttribute('visibility', 'hidden'); tip.hidden = true; });
  root.append(overlay);
  const legend = el('div', { class: 'legend' }, layers.filter((l) => l.label).map((l) => el('span', {},
    el('i', { class: 'swatch ' + l.cls, style: l.color ? `background:${l.color}` : null }), l.label)));
  container.replaceChildren(root, tip, legend);
}

// ---- a station -----------------------------------------------------------------------------------------------

async function stationView(target, code, params, show) {
  const data = await stations();
  const station = data.stations.find((s) => s.code === code);
  if (!station) {
    target.append(el('h1', {}, 'Unknown station'),
      notice(`There is no station “${code}”. Pick one on the stations page.`, 'error'),
      el('p', {}, el('a', { href: '#/' }, 'All stations')));
    return;
  }
  const pollutant = params.get('pollutant') || 'pm25';
  const info = data.pollutants.find((p) => p.code === pollutant) || data.pollutants[0];
  const latest = station.pollutants[info.code];
  const last = latest ? seconds(latest.last) : null;
  const to = params.get('to') || (last ? dateOnly(last + DAY) : '');
  const from = params.get('from') || (last ? dateOnly(seconds(to + 'T00:00:00Z') - 7 * DAY) : '');
  const go = (changes) => { location.hash = link(['station', code], Object.assign({ pollutant: info.code, from, to }, changes)); };

  target.append(el('h1', {}, station.name));
  const fromInput = dateInput('from', from);
  const toInput = dateInput('to', to);
  const quick = (label, days) => el('button', { type: 'button', 'data-range': String(days), onclick: () => {
    if (!last) return;
    const end = dateOnly(last + DAY);
    const start = days ? dateOnly(seconds(end + 'T00:00:00Z') - days * DAY) : dateOnly(seconds(latest.first));
    go({ from: start, to: end });
  } }, label);
  target.append(el('form', { class: 'controls', onsubmit: (e) => { e.preventDefault(); go({ from: fromInput.value, to: toInput.value }); } },
    pollutantSelect(data.pollutants, info.code, (p) => go({ pollutant: p, from: '', to: '' })),
    el('label', {}, 'From', fromInput), el('label', {}, 'To', toInput),
    el('button', { class: 'primary', type: 'submit' }, 'Show'),
    el('div', { class: 'quick' }, quick('7 days', 7), quick('30 days', 30), quick('1 year', 365), quick('All', 0))));

  if (!latest) {
    target.append(notice(`${station.name} has no ${info.label} values. Try another pollutant.`));
    return;
  }
  target.append(el('div', { class: 'facts' },
    el('div', {}, el('span', { class: 'k' }, 'Newest value'), el('span', { class: 'v' }, `${formatNumber(latest.value)} ${unitLabel(latest.unit)}`)),
    el('div', {}, el('span', { class: 'k' }, 'Category'), el('span', { class: 'v' }, badge(latest.category))),
    el('div', {}, el('span', { class: 'k' }, 'Index'), el('span', { class: 'v' }, latest.aqi ?? '–')),
    el('div', {}, el('span', { class: 'k' }, 'Data'), el('span', { class: 'v' }, `${dateOnly(seconds(latest.first))} to ${dateTime(last)}`))));

  const notices = el('div', { class: 'notices' });
  const old = ageNotice(latest.last);
  if (old) notices.append(old);
  const panel = el('div', { class: 'panel' }, el('p', { class: 'loading', role: 'status' }, 'Loading the series…'));
  target.append(notices, panel);
  // On the page before the chart is drawn, so that the chart takes the page's width.
  show();

  const rangeTo = seconds(to + 'T00:00:00Z');
  const wantsForecast = rangeTo >= last;
  const [series, forecast] = await Promise.allSettled([
    api(`stations/${encodeURIComponent(code)}/series`, { pollutant: info.code, from, to, points: 600 }),
    wantsForecast ? api(`stations/${encodeURIComponent(code)}/forecast`, { pollutant: info.code, confidence: '0.8,0.9' })
      : Promise.resolve(null),
  ]);
  if (series.status === 'rejected') {
    panel.replaceChildren();
    const e = series.reason;
    notices.append(notice(e.code === 'no_data' ? e.message + '.' : 'The series could not be read: ' + e.message,
      e.code === 'no_data' ? undefined : 'error'));
    return;
  }
  const s = series.value;
  const t = (i) => s.start + i * s.bucketSeconds;
  const hourly = s.bucketSeconds === HOUR;
  const layers = [];
  if (!hourly) {
    layers.push({ kind: 'band', cls: 'band-range', label: 'min–max', points: s.mean.map((_, i) => [t(i), s.min[i], s.max[i]]) });
  }
  layers.push({ kind: 'line', cls: 'series-mean', label: hourly ? 'hourly value' : bucketLabel(s.bucketSeconds).toLowerCase(),
    points: s.mean.map((v, i) => [t(i), v]) });
  let domain = [s.start, s.start + s.mean.length * s.bucketSeconds];
  let marker = null;
  if (forecast.status === 'fulfilled' && forecast.value) {
    const f = forecast.value;
    const points = f.points.map((p) => ({ t: seconds(p.time), p }));
    const levels = [...new Set(f.points.flatMap((p) => p.intervals.map((i) => i.confidence)))].sort((a, b) => b - a);
    levels.forEach((level, index) => {
      layers.push({ kind: 'band', cls: `band-forecast level-${levels.length - 1 - index}`,
        label: `${Math.round(level * 100)} % interval`,
        points: points.map(({ t: time, p }) => {
          const i = p.intervals.find((q) => q.confidence === level);
          return [time, i ? i.lower : null, i ? i.upper : null];
        }) });
    });
    layers.push({ kind: 'line', cls: 'forecast-line', label: `forecast (${f.model} ${f.version})`,
      points: points.map(({ t: time, p }) => [time, p.value]) });
    domain = [domain[0], Math.max(domain[1], points.length ? points[points.length - 1].t : domain[1])];
    marker = seconds(f.origin);
    if (f.fallback) notices.append(notice('Some recent inputs were missing: this forecast is the model’s climatology.'));
  } else if (forecast.status === 'rejected') {
    const e = forecast.reason;
    const text = e.code === 'forecast_unavailable' ? 'The forecast is not available right now (the predictive service did not answer). The chart shows the measurements only.'
      : e.code === 'no_model' ? `No trained model forecasts ${info.label} at ${station.name}; the chart shows the measurements only.`
        : e.code === 'training' ? `No forecast yet: ${e.message} (reload the page then). The chart shows the measurements only.`
        : `No forecast: ${e.message}`;
    notices.append(notice(text));
  } else if (!wantsForecast) {
    notices.append(notice(`The forecast starts after the newest data (${dateTime(last)} UTC); move the range to the end to see it.`));
  }
  if (s.filled === 0) notices.append(notice(`No ${info.label} values between ${s.from} and ${s.to}.`));
  panel.replaceChildren(chart(el('div', { id: 'chart' }), { layers, unit: s.unit, domain, marker }));
  if (forecast.status === 'fulfilled' && forecast.value) panel.append(forecastTable(forecast.value));
}

function forecastTable(f) {
  const levels = [...new Set(f.points.flatMap((p) => p.intervals.map((i) => i.confidence)))].sort();
  const rows = f.points.filter((_, i) => i % 3 === 2 || i === 0);
  return el('details', {}, el('summary', {}, `Forecast from ${dateTime(seconds(f.origin))} UTC, ${f.algorithm}`),
    el('div', { class: 'table-wrap' }, el('table', {},
      el('thead', {}, el('tr', {}, el('th', {}, 'Time (UTC)'), el('th', { class: 'num' }, 'Expected'),
        levels.map((l) => el('th', { class: 'num' }, `${Math.round(l * 100)} % interval`)))),
      el('tbody', {}, rows.map((p) => el('tr', {}, el('td', {}, dateTime(seconds(p.time))),
        el('td', { class: 'num' }, formatNumber(p.value)),
        levels.map((l) => {
          const i = p.intervals.find((q) => q.confidence === l);
          return el('td', { class: 'num' }, i ? `${formatNumber(i.lower)}–${formatNumber(i.upper)}` : '–');
        })))))));
}

// ---- comparison ----------------------------------------------------------------------------------------------

async function compareView(target, params) {
  const data = await stations();
  const pollutant = params.get('pollutant') || 'pm25';
  const info = data.pollutants.find((p) => p.code === pollutant) || data.pollutants[0];
  const from = params.get('from') || '', to = params.get('to') || '';
  const go = (changes) => { location.hash = link(['compare'], Object.assign({ pollutant: info.code, from, to }, changes)); };
  const fromInput = dateInput('from', from);
  const toInput = dateInput('to', to);
  target.append(el('h1', {}, `Compare stations: ${info.label}`));
  target.append(el('form', { class: 'controls', onsubmit: (e) => { e.preventDefault(); go({ from: fromInput.value, to: toInput.value }); } },
    pollutantSelect(data.pollutants, info.code, (p) => go({ pollutant: p })),
    el('label', {}, 'From', fromInput), el('label', {}, 'To', toInput),
    el('button', { class: 'primary', type: 'submit' }, 'Show')));
  let body;
  try {
    body = await api('compare', { pollutant: info.code, from, to, points: 300 });
  } catch (e) {
    target.append(notice(e.message, 'error'));
    return;
  }
  const t = (i) => body.start + i * body.bucketSeconds;
  const layers = body.series.filter((s) => s.filled > 0).map((s, i) => ({
    kind: 'line', cls: 'series-compare', label: s.name, color: PALETTE[i % PALETTE.length],
    points: s.mean.map((v, j) => [t(j), v]),
  }));
  if (layers.length === 0) {
    target.append(notice(`No ${info.label} values between ${body.from} and ${body.to}.`));
    return;
  }
  target.append(el('p', { class: 'meta', id: 'compare-range' }, `${bucketLabel(body.bucketSeconds)}, `
    + `${dateTime(seconds(body.from))} to ${dateTime(seconds(body.to))} UTC.`));
  target.append(el('div', { class: 'panel' }, chart(el('div', { id: 'chart' }),
    { layers, unit: body.unit, domain: [body.start, body.start + body.count * body.bucketSeconds] })));
}

// ---- operations ----------------------------------------------------------------------------------------------

function metric(metrics, names) {
  // Scores are nested by the predictive service (e.g. {test: {mae}} or {mae}); the first match is shown.
  const seen = [metrics];
  while (seen.length) {
    const value = seen.shift();
    if (!value || typeof value !== 'object') continue;
    for (const name of names) if (typeof value[name] === 'number') return value[name];
    for (const child of Object.values(value)) if (child && typeof child === 'object') seen.push(child);
  }
  return null;
}

function duration(startRfc, endRfc) {
  if (!endRfc) return 'running';
  const s = seconds(endRfc) - seconds(startRfc);
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

// What each part's signals mean, for the anomalies table.
const SIGNALS = {
  request_rate: 'request rate', error_ratio: 'share of 5xx answers', latency_seconds: 'mean latency',
  load_duration_seconds: 'load duration', load_values_read: 'values a load read',
  forecast_abs_error: 'forecast error',
};

function anomaliesTable(anomalies) {
  return el('div', { class: 'table-wrap' }, el('table', { id: 'anomalies' },
    el('thead', {}, el('tr', {}, ['State', 'Part', 'Signal', 'Of', 'Since (UTC)', 'Closed (UTC)'].map((h) => el('th', {}, h)),
      ['Value', 'Usual', 'Peak score'].map((h) => el('th', { class: 'num' }, h)), el('th', {}, 'What'))),
    el('tbody', {}, anomalies.map((a) => el('tr', { class: a.closedAt ? 'anomaly-closed' : 'anomaly-open' },
      el('td', { class: a.closedAt ? '' : 'status-failed' }, a.closedAt ? 'closed' : 'open'),
      el('td', {}, a.component), el('td', {}, SIGNALS[a.signal] || a.signal), el('td', {}, a.subject),
      el('td', {}, dateTime(seconds(a.openedAt))), el('td', {}, a.closedAt ? dateTime(seconds(a.closedAt)) : ''),
      el('td', { class: 'num' }, formatNumber(a.value)), el('td', { class: 'num' }, formatNumber(a.expected)),
      el('td', { class: 'num' }, a.peakScore.toFixed(1)), el('td', {}, a.detail))))));
}

async function opsView(target) {
  const [ops, known] = await Promise.all([api('ops'), stations()]);
  const pollutantInfo = new Map(known.pollutants.map((p) => [p.code, p]));
  const stationName = new Map(known.stations.map((s) => [s.code, s.name]));
  target.append(el('h1', {}, 'Operations'));
  target.append(el('h2', {}, 'Anomalies'));
  const open = ops.anomalies.filter((a) => !a.closedAt).length;
  if (ops.anomalies.length === 0) target.append(notice('No anomaly in the last 24 hours.'));
  else {
    target.append(el('p', { class: 'meta', id: 'anomalies-summary' },
      `${open} open, ${ops.anomalies.length - open} closed in the last 24 hours.`));
    target.append(anomaliesTable(ops.anomalies));
  }
  target.append(el('h2', {}, 'Loads'));
  if (ops.loads.length === 0) target.append(notice('No load has run yet.'));
  else {
    target.append(el('div', { class: 'table-wrap' }, el('table', { id: 'loads' },
      el('thead', {}, el('tr', {}, ['Run', 'Load', 'Source', 'Status', 'Started (UTC)', 'Took'].map((h) => el('th', {}, h)),
        ['Read', 'Inserted', 'Updated', 'Rejected', 'Stuck', 'Jumps'].map((h) => el('th', { class: 'num' }, h)),
        el('th', {}, 'Error'))),
      el('tbody', {}, ops.loads.map((r) => el('tr', {},
        el('td', {}, r.id), el('td', {}, r.name), el('td', {}, `${r.source} (${r.mode})`),
        el('td', { class: 'status-' + r.status }, r.status), el('td', {}, dateTime(seconds(r.startedAt))),
        el('td', {}, duration(r.startedAt, r.finishedAt)),
        [r.rowsRead, r.rowsInserted, r.rowsUpdated, r.rowsRejected, r.rowsStuck, r.rowsJump]
          .map((n) => el('td', { class: 'num' }, n.toLocaleString('en'))),
        el('td', {}, r.error || '')))))));
    target.append(el('p', { class: 'meta' }, 'Stuck: values of a run\'s series that repeat the same value 24 hours or more '
      + 'above the series\' floor. Jumps: spikes far outside the usual band for the hour that come back within 3 hours. '
      + 'Both are kept and marked.'));
  }
  target.append(el('h2', {}, 'Models'));
  if (ops.modelsError) target.append(notice('The model list is not available: ' + ops.modelsError));
  else if (!ops.models || ops.models.length === 0) target.append(notice('No model is defined yet.'));
  else {
    target.append(el('div', { class: 'table-wrap' }, el('table', { id: 'models' },
      el('thead', {}, el('tr', {}, ['Model', 'Version', 'Algorithm', 'Pollutant', 'Trained (UTC)'].map((h) => el('th', {}, h)),
        ['MAE', 'RMSE', '90 % coverage', 'Training'].map((h) => el('th', { class: 'num' }, h)))),
      el('tbody', {}, ops.models.map((m) => {
        const v = m.latest;
        const pollutant = (m.spec && m.spec.target && m.spec.target.pollutant) || '';
        if (!v) return el('tr', {}, el('td', {}, m.name), el('td', { colspan: 8 }, 'not trained yet'));
        return el('tr', {}, el('td', {}, m.name), el('td', {}, v.version), el('td', {}, v.algorithm),
          el('td', {}, pollutantInfo.has(pollutant) ? pollutantInfo.get(pollutant).label : pollutant),
          el('td', {}, dateTime(seconds(v.createdAt))),
          el('td', { class: 'num' }, formatNumber(metric(v.metrics, ['mae']))),
          el('td', { class: 'num' }, formatNumber(metric(v.metrics, ['rmse']))),
          el('td', { class: 'num' }, formatNumber(coverage(v.metrics, 0.9))),
          el('td', { class: 'num' }, `${v.trainSeconds.toFixed(1)} s`));
      })))));
  }
  target.append(el('h2', {}, 'Stored data'));
  if (ops.series.length === 0) {
    target.append(notice('No data is stored yet.'));
    return;
  }
  // One row per station: its extent and the newest value of each pollutant.
  const order = known.pollutants.map((p) => p.code);
  const pollutants = [...new Set(ops.series.map((s) => s.pollutant))]
    .sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99) || a.localeCompare(b));
  const byStation = new Map();
  for (const s of ops.series) {
    const row = byStation.get(s.station) || { first: Infinity, last: -Infinity, values: {} };
    row.first = Math.min(row.first, seconds(s.first));
    row.last = Math.max(row.last, seconds(s.last));
    row.values[s.pollutant] = s;
    byStation.set(s.station, row);
  }
  target.append(el('div', { class: 'table-wrap' }, el('table', { id: 'data' },
    el('thead', {}, el('tr', {}, ['Station', 'First (UTC)', 'Newest (UTC)'].map((h) => el('th', {}, h)),
      pollutants.map((p) => {
        const info = pollutantInfo.get(p);
        return el('th', { class: 'num', 'data-pollutant': p }, info ? `${info.label} (${unitLabel(info.unit)})` : p);
      }))),
    el('tbody', {}, [...byStation].sort(([a], [b]) => (stationName.get(a) || a).localeCompare(stationName.get(b) || b))
      .map(([station, row]) => el('tr', {}, el('td', {}, stationName.get(station) || station),
      el('td', {}, dateTime(row.first)), el('td', {}, dateTime(row.last)),
      pollutants.map((p) => {
        const v = row.values[p];
        return el('td', { class: 'num', title: v ? `newest at ${dateTime(seconds(v.last))} UTC` : null },
          v ? formatNumber(v.value) : '–');
      })))))));
  target.append(el('p', { class: 'meta' }, 'The newest value of each pollutant; hover for its time.'));
}

function coverage(metrics, level) {
  // Interval scores are listed per level: find the one at `level`.
  const seen = [metrics];
  while (seen.length) {
    const value = seen.shift();
    if (Array.isArray(value)) {
      for (const item of value) {
        if (item && typeof item === 'object' && Math.abs((item.level ?? item.confidence ?? -1) - level) < 1e-9
          && typeof item.coverage === 'number') return item.coverage;
        seen.push(item);
      }
    } else if (value && typeof value === 'object') {
      seen.push(...Object.values(value));
    }
  }
  return null;
}

// ---- the API's reference ----------------------------------------------------------------------------------------

// A JSON Schema in a few words: `string`, `array of Station`, `Forecast`…
function schemaName(schema) {
  if (!schema) return '';
  if (schema.$ref) return schema.$ref.split('/').pop();
  const one = schema.oneOf || schema.anyOf;
  if (one) return one.map(schemaName).filter((n) => n && n !== 'null').join(' or ') || 'null';
  if (schema.allOf) return schema.allOf.map(schemaName).join(' and ');
  const type = Array.isArray(schema.type) ? schema.type.filter((t) => t !== 'null').join(' or ') : schema.type;
  if (type === 'array') return 'array of ' + schemaName(schema.items);
  return type || 'any';
}

// Text of the document with its `code` spans as code (built as nodes, never as HTML).
function prose(tag, attrs, text) {
  return el(tag, attrs, ...String(text || '').split('`').map((part, i) => (i % 2 ? el('code', {}, part) : part)));
}

function bodyOf(content) {
  return Object.entries(content || {}).map(([kind, media]) => `${schemaName(media.schema)} (${kind})`).join(', ');
}

// The OpenAPI document of everything behind the gateway, as a page: each part, each operation with its
// parameters, body and answers. The document itself is at api/openapi.json.
async function apiView(target) {
  const doc = await api('openapi.json');
  target.append(el('h1', {}, 'API'));
  target.append(prose('p', { class: 'meta' }, doc.info.description));
  target.append(el('p', {}, 'The OpenAPI document: ', el('a', { href: 'api/openapi.json', id: 'openapi-link' }, 'api/openapi.json'),
    ` (OpenAPI ${doc.openapi}, version ${doc.info.version}).`));
  const operations = [];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of ['get', 'put', 'post', 'patch', 'delete']) {
      if (item[method]) operations.push({ path, method, op: item[method], params: item.parameters || [] });
    }
  }
  const tags = (doc.tags || []).map((t) => t.name);
  for (const o of operations) for (const t of o.op.tags || []) if (!tags.includes(t)) tags.push(t);
  for (const tag of tags) {
    const mine = operations.filter((o) => (o.op.tags || []).includes(tag));
    if (mine.length === 0) continue;
    const info = (doc.tags || []).find((t) => t.name === tag);
    const section = el('section', { class: 'api-part', 'data-tag': tag }, el('h2', {}, tag),
      info && info.description ? prose('p', { class: 'meta' }, info.description) : null);
    for (const { path, method, op, params } of mine) {
      const parameters = [...params, ...(op.parameters || [])];
      const answers = Object.entries(op.responses || {});
      section.append(el('article', { class: 'api-operation' },
        el('h3', {}, el('span', { class: 'method method-' + method }, method.toUpperCase()), ' ', el('code', {}, path)),
        op.summary ? prose('p', {}, op.summary) : null,
        op.description ? prose('p', { class: 'meta' }, op.description) : null,
        parameters.length ? el('div', { class: 'table-wrap' }, el('table', {},
          el('thead', {}, el('tr', {}, ['Parameter', 'In', 'Type', ''].map((h) => el('th', {}, h)))),
          el('tbody', {}, parameters.map((p) => el('tr', {},
            el('td', {}, el('code', {}, p.name), p.required ? ' (required)' : ''), el('td', {}, p.in),
            el('td', {}, schemaName(p.schema)), prose('td', {}, p.description)))))) : null,
        op.requestBody ? el('p', {}, 'Body: ', bodyOf(op.requestBody.content)) : null,
        el('ul', { class: 'api-answers' }, answers.map(([status, r]) => el('li', {},
          el('strong', {}, status), ' ', prose('span', {}, r.description), r.content ? ' — ' + bodyOf(r.content) : '')))));
    }
    target.append(section);
  }
}
