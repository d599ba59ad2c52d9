// nrdot dashboard: one page, no framework, no build step. Every figure and every action goes
// through /api/v2 with the session cookie; mutating calls carry the session's X-CSRF-Token.
// Data is only ever put into the page as text (textContent), never as HTML.
'use strict';

const ROLES = ['viewer', 'operator', 'admin'];
const state = { session: null, timer: null, view: null, rollout: null };

const $ = (id) => document.getElementById(id);

/** Builds an element: attrs may hold text, class, id, type, value, on<event> handlers. */
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k in e && k !== 'list') e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = state.session ? state.session.csrf : '';
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch('/api/v2/' + path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && path !== 'session') {
    showLogin('Your session ended; log in again.');
    throw new ApiError(401, 'session ended');
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.statusText);
  return data;
}

function can(role) {
  return state.session && ROLES.indexOf(state.session.role) >= ROLES.indexOf(role);
}

function notice(text, isError) {
  const n = $('notice');
  n.textContent = text;
  n.className = isError ? 'error' : '';
  n.hidden = !text;
}

/** Runs an action, reports its outcome, then re-renders the current view. */
async function act(label, fn) {
  try {
    await fn();
    notice(label + ': done');
  } catch (e) {
    if (e.status !== 401) notice(label + ': ' + e.message, true);
  }
  await render();
}

const pct = (x) => (x * 100).toFixed(x < 0.01 && x > 0 ? 2 : 1) + '%';
const short = (s) => (s || '').slice(0, 12);

// ---- session ---------------------------------------------------------------------------

function showLogin(message) {
  state.session = null;
  stopTimer();
  $('bar').hidden = true;
  $('app').replaceChildren();
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('login-password').focus();
}

async function login(ev) {
  ev.preventDefault();
  $('login-error').textContent = '';
  try {
    state.session = await api('POST', 'session', {
      user: $('login-user').value,
      password: $('login-password').value,
    });
  } catch (e) {
    $('login-error').textContent = e.status === 401 ? 'Wrong user or password.' : e.message;
    return;
  }
  $('login-password').value = '';
  started();
}

function started() {
  $('login').hidden = true;
  $('bar').hidden = false;
  $('who').textContent = state.session.user + ' (' + state.session.role + ')';
  $('password-open').hidden = !can('admin');
  if (!location.hash) location.hash = '#overview';
  render();
}

async function logout() {
  try { await api('DELETE', 'session'); } catch (_) { /* gone already */ }
  notice('');
  showLogin('Logged out.');
}

async function changePassword(ev) {
  ev.preventDefault();
  const out = $('password-result');
  try {
    await api('POST', 'admin/password', {
      current: $('password-current').value,
      password: $('password-new').value,
    });
    out.textContent = 'Password changed. Other sessions were logged out.';
    out.className = 'ok';
    $('password-form').reset();
  } catch (e) {
    out.textContent = e.message;
    out.className = 'error';
  }
}

// ---- views -----------------------------------------------------------------------------

const VIEWS = { overview, rollouts, config, backends, audit };

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

async function render() {
  if (!state.session) return;
  const name = (location.hash || '#overview').slice(1).split('/')[0];
  const view = VIEWS[name] || overview;
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('active', a.getAttribute('href') === '#' + name);
  }
  if (state.view !== name) {
    stopTimer();
    state.view = name;
    if (name === 'overview' || name === 'rollouts' || name === 'backends') {
      state.timer = setInterval(() => refresh(view, true), 2000);
    }
  }
  await refresh(view);
}

async function refresh(view, polled) {
  // A poll does not redraw under someone typing in a form of the page.
  const active = document.activeElement;
  if (polled && active && active.closest && active.closest('#app form')) return;
  try {
    const content = await view();
    $('app').replaceChildren(...[content].flat());
  } catch (e) {
    if (e.status !== 401) notice(e.message, true);
  }
}

function table(headers, rows, id) {
  return el('table', { id },
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { text: h })))),
    el('tbody', {}, rows));
}

/** The route's split as text: "blue 90% · green 10%". */
function splitText(route) {
  if (route.pool) return route.pool + ' 100%';
  const split = route.split || [];
  const total = split.reduce((s, e) => s + (e.weight || 0), 0) || 1;
  return split.map((e) => e.pool + ' ' + Math.round((e.weight * 100) / total) + '%').join(' · ');
}

/** A small line chart of `values` (oldest first), scaled to its own maximum. */
function chart(series, key, color, label) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('viewBox', '0 0 300 70');
  svg.setAttribute('preserveAspectRatio', 'none');
  const values = series.map((p) => p[key]);
  const max = Math.max(...values, key === 'error_rate' ? 0.05 : 1);
  const n = Math.max(values.length - 1, 1);
  const points = values.map((v, i) => (i * 300) / n + ',' + (68 - (v / max) * 64)).join(' ');
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', points);
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', color);
  line.setAttribute('stroke-width', '1.5');
  const title = document.createElementNS(ns, 'title');
  title.textContent = label + ', last 15 minutes (max ' + (key === 'error_rate' ? pct(max) : max.toFixed(1)) + ')';
  svg.append(title, line);
  return svg;
}

async function overview() {
  const [version, cfg, backendsList, stats] = await Promise.all([
    api('GET', 'version'), api('GET', 'config'), api('GET', 'backends'), api('GET', 'stats'),
  ]);
  const routes = (cfg.json && cfg.json.route) || [];
  const byPool = {};
  for (const b of backendsList.backends) (byPool[b.pool] = byPool[b.pool] || []).push(b);
  const cards = stats.pools.map((p) => {
    const last = p.series[p.series.length - 1] || { rps: 0, error_rate: 0, p99_ms: 0 };
    const servers = byPool[p.pool] || [];
    const up = servers.filter((b) => b.health !== 'unhealthy' && b.admin_state === 'enabled' && !b.ejected).length;
    return el('div', { class: 'card', id: 'pool-' + p.pool },
      el('h3', { text: 'pool ' + p.pool }),
      el('div', { class: 'figures' },
        el('span', {}, el('b', { class: 'rps', text: last.rps.toFixed(1) }), ' req/s'),
        el('span', { class: last.error_rate > 0.05 ? 'bad' : '' }, el('b', { text: pct(last.error_rate) }), ' errors'),
        el('span', {}, el('b', { text: last.p99_ms }), ' ms p99'),
        el('span', { class: up < servers.length / 2 ? 'bad' : 'ok' }, up + '/' + servers.length + ' servers up')),
      chart(p.series, 'rps', '#2457c5', 'requests/s'),
      chart(p.series, 'error_rate', '#c62828', 'error rate'),
      el('div', { class: 'muted' }, servers.map((b) => el('div', {
        text: b.address + ' · ' + b.health + ' · ' + b.admin_state + ' · ' + b.in_flight + ' in flight',
      }))));
  });
  return [
    el('p', { class: 'muted', id: 'version' },
      'config version ', el('b', { text: version.config_version }),
      ' · checksum ', el('code', { text: short(version.config_checksum) }),
      ' · table generation ' + version.generation,
      version.environment ? ' · environment ' + version.environment : '',
      ' · nrdot ' + version.binary),
    el('h2', { text: 'Routes' }),
    table(['route', 'hosts', 'path', 'split'], routes.map((r) => el('tr', { 'data-route': r.name },
      el('td', { text: r.name }),
      el('td', { text: [].concat(r.host || '*').join(', ') }),
      el('td', { text: r.path || '/' }),
      el('td', { class: 'split', text: splitText(r) }))), 'routes'),
    el('h2', { text: 'Pools (live, 2 s)' }),
    el('div', { class: 'grid' }, cards),
  ];
}

// ---- rollouts --------------------------------------------------------------------------

const VERBS = {
  progressing: ['promote', 'pause', 'abort', 'rollback'],
  paused: ['resume', 'promote', 'abort', 'rollback'],
  awaiting_approval: ['approve', 'abort', 'rollback'],
};

function rolloutTarget(r) {
  const p = r.plan;
  const where = r.region ? ' in region ' + r.region : '';
  return p.kind === 'rolling' ? 'pool ' + p.pool : 'route ' + p.route + ': ' + p.from + ' → ' + p.to + where;
}

function rolloutForm(cfg) {
  const routes = ((cfg.json && cfg.json.route) || []).map((r) => r.name);
  const pools = ((cfg.json && cfg.json.pool) || []).map((p) => p.name);
  const opts = (list) => list.map((x) => el('option', { value: x, text: x }));
  const kind = el('select', { id: 'ro-kind' }, opts(['canary', 'blue-green', 'rolling']));
  const field = (label, input) => el('label', { 'data-for': label }, label + ' ', input);
  const inputs = {
    route: el('select', { id: 'ro-route' }, opts(routes)),
    to: el('select', { id: 'ro-to' }, opts(pools)),
    steps: el('input', { id: 'ro-steps', value: '10,50,100', size: 14 }),
    interval: el('input', { id: 'ro-interval', value: '30m', size: 6 }),
    max_error_rate: el('input', { id: 'ro-max-error-rate', value: '5%', size: 5 }),
    max_p99: el('input', { id: 'ro-max-p99', placeholder: 'e.g. 500ms', size: 8 }),
    keep_old: el('input', { id: 'ro-keep-old', value: '24h', size: 6 }),
    pool: el('select', { id: 'ro-pool' }, opts(pools)),
    batch: el('input', { id: 'ro-batch', value: '1', size: 3 }),
    hook: el('input', { id: 'ro-hook', placeholder: 'command run per server', size: 22 }),
    wait: el('input', { id: 'ro-wait', value: '10s', size: 6 }),
    region: el('input', { id: 'ro-region', placeholder: 'all regions', size: 10 }),
  };
  const uses = {
    canary: ['route', 'to', 'steps', 'interval', 'max_error_rate', 'max_p99', 'region'],
    'blue-green': ['route', 'to', 'keep_old', 'region'],
    rolling: ['pool', 'batch', 'hook', 'wait'],
  };
  const labels = Object.entries(inputs).map(([k, input]) => field(k, input));
  const show = () => labels.forEach((l) => { l.hidden = !uses[kind.value].includes(l.dataset.for); });
  kind.addEventListener('change', show);
  show();
  const submit = (ev) => {
    ev.preventDefault();
    const body = { kind: kind.value };
    for (const k of uses[kind.value]) {
      const v = inputs[k].value.trim();
      if (v !== '') body[k] = k === 'batch' ? Number(v) : v;
    }
    act('start ' + kind.value, () => api('POST', 'rollouts', body));
  };
  return el('form', { class: 'inline-form', id: 'rollout-form', onsubmit: submit },
    el('label', {}, 'kind ', kind), labels,
    el('button', { type: 'submit', class: 'primary', id: 'ro-start', text: 'Start rollout' }));
}

function thresholds(r) {
  const a = r.plan.analysis;
  const m = r.measured;
  if (!a || !m) return null;
  const row = (name, value, limit, bad) => el('tr', {},
    el('td', { text: name }), el('td', { class: bad ? 'bad' : 'ok', text: value }), el('td', { text: limit }));
  return table(['analysis', 'measured', 'threshold'], [
    row('error rate', pct(m.error_rate) + ' of ' + m.window_requests, '≤ ' + pct(a.max_error_rate), m.error_rate > a.max_error_rate),
    row('p99', m.p99_ms + ' ms', a.max_p99_ms ? '≤ ' + a.max_p99_ms + ' ms' : 'not checked', a.max_p99_ms && m.p99_ms > a.max_p99_ms),
    row('healthy servers', pct(m.healthy_fraction), '≥ ' + pct(a.min_healthy), m.healthy_fraction < a.min_healthy),
    row('memory', pct(m.memory_fraction), '≤ ' + pct(a.max_memory), m.memory_fraction > a.max_memory),
  ], 'analysis');
}

function rolloutDetail(r) {
  const verbs = can('operator') ? VERBS[r.phase] || [] : [];
  return el('div', { class: 'card', id: 'rollout-detail' },
    el('h3', { text: 'rollout ' + r.id + ' · ' + r.plan.kind + ' · ' + rolloutTarget(r) }),
    el('p', {}, 'phase ', el('b', { id: 'rollout-phase', text: r.phase }),
      ' · weight ', el('b', { id: 'rollout-weight', text: r.weight + '%' }),
      r.plan.steps ? ' · steps ' + r.plan.steps.join(', ') + '%' : '',
      r.reason ? ' · ' + r.reason : ''),
    el('p', {}, verbs.map((v) => el('button', {
      type: 'button', id: 'rollout-' + v, class: v === 'abort' || v === 'rollback' ? 'danger' : '',
      text: v, onclick: () => act(v + ' rollout ' + r.id, () => api('POST', 'rollouts/' + r.id + '/' + v)),
    }))),
    thresholds(r),
    el('h3', { text: 'timeline' }),
    el('ol', { class: 'timeline', id: 'timeline' }, r.events.map((e) => el('li', {},
      el('code', { text: e.time.replace('T', ' ').slice(0, 19) }), ' ', el('b', { text: e.kind }), ' ', e.detail,
      e.numbers && Object.keys(e.numbers).length ? el('span', { class: 'muted', text: ' ' + JSON.stringify(e.numbers) }) : null))));
}

async function rollouts() {
  const [list, cfg] = await Promise.all([api('GET', 'rollouts'), api('GET', 'config')]);
  const all = list.rollouts.slice().reverse();
  const chosen = all.find((r) => r.id === state.rollout) || all[0];
  const rows = all.map((r) => el('tr', { 'data-rollout': r.id, class: chosen && r.id === chosen.id ? 'active' : '' },
    el('td', {}, el('a', { href: '#rollouts', text: String(r.id), onclick: () => { state.rollout = r.id; } })),
    el('td', { text: r.plan.kind }), el('td', { text: rolloutTarget(r) }),
    el('td', { class: 'phase', text: r.phase }), el('td', { text: r.weight + '%' }),
    el('td', { text: r.author }), el('td', { text: r.created })));
  // The form is rebuilt only when absent, so polling does not wipe what is being typed.
  const form = can('operator') ? ($('rollout-form') || rolloutForm(cfg)) : null;
  return [
    form ? el('h2', { text: 'Start a rollout' }) : null, form,
    el('h2', { text: 'Rollouts' }),
    all.length ? table(['id', 'kind', 'target', 'phase', 'weight', 'author', 'started'], rows, 'rollouts') : el('p', { class: 'muted', text: 'No rollouts yet.' }),
    chosen ? rolloutDetail(chosen) : null,
  ];
}

// ---- config ----------------------------------------------------------------------------

async function config() {
  const list = await api('GET', 'config/versions');
  const versions = list.versions.slice().reverse();
  const params = new URLSearchParams((location.hash.split('?')[1]) || '');
  const current = versions.length ? versions[0].id : 0;
  const to = Number(params.get('to')) || current;
  const from = Number(params.get('from')) || (versions[1] ? versions[1].id : current);
  const pick = (id, chosen) => el('select', { id }, versions.map((v) => el('option', { value: v.id, text: String(v.id), selected: v.id === chosen })));
  const fromSel = pick('diff-from', from);
  const toSel = pick('diff-to', to);
  const show = el('button', { type: 'button', id: 'diff-show', text: 'Show diff', onclick: () => {
    location.hash = '#config?from=' + fromSel.value + '&to=' + toSel.value;
  } });
  const diff = await api('GET', 'config/diff?from=' + from + '&to=' + to);
  const lines = (diff.diff || '').split('\n').map((l) => el('div', {
    class: l.startsWith('+') ? 'add' : l.startsWith('-') ? 'del' : l.startsWith('@@') ? 'hunk' : '', text: l || ' ',
  }));
  const rows = versions.map((v) => el('tr', { 'data-version': v.id },
    el('td', { text: v.id + (v.id === current ? ' (current)' : '') }), el('td', { text: v.time }),
    el('td', { text: v.author }), el('td', { text: v.message }), el('td', {}, el('code', { text: short(v.checksum) }))));
  const confirmBox = el('div', { class: 'confirm', id: 'rollback-confirm', hidden: true },
    'Make version ' + from + '\'s content current again, as a new version? Traffic follows at once. ',
    el('button', { type: 'button', class: 'danger', id: 'rollback-confirm-yes', text: 'Confirm rollback', onclick: () =>
      act('roll back to version ' + from, async () => {
        await api('POST', 'config/rollback', { version: from, message: 'rollback from the dashboard' });
        location.hash = '#config';
      }) }),
    el('button', { type: 'button', text: 'Cancel', onclick: () => { confirmBox.hidden = true; } }));
  const rollback = can('admin') && from !== current ? [
    el('button', { type: 'button', class: 'danger', id: 'rollback', text: 'Roll back to version ' + from,
      onclick: () => { confirmBox.hidden = false; } }), confirmBox] : [];
  return [
    el('h2', { text: 'Diff' }),
    el('p', {}, 'from ', fromSel, ' to ', toSel, ' ', show, ' ', rollback),
    el('pre', { class: 'diff', id: 'diff' }, lines.length > 1 || lines[0].textContent.trim() ? lines : el('span', { class: 'muted', text: 'No difference.' })),
    el('h2', { text: 'Versions' }),
    table(['version', 'time', 'author', 'message', 'checksum'], rows, 'versions'),
  ];
}

// ---- backends --------------------------------------------------------------------------

async function backends() {
  const list = await api('GET', 'backends');
  const rows = list.backends.map((b) => {
    const enabled = b.admin_state === 'enabled';
    const verb = enabled ? 'disable' : 'enable';
    return el('tr', { 'data-backend': b.id },
      el('td', { text: b.pool }), el('td', { text: b.address }), el('td', { text: b.weight }),
      el('td', { class: b.health === 'unhealthy' ? 'bad' : 'ok', text: b.health + (b.ejected ? ' (ejected)' : '') }),
      el('td', { class: 'state', text: b.admin_state }), el('td', { class: 'in-flight', text: b.in_flight }),
      el('td', { text: b.requests }), el('td', { text: b.failures }),
      el('td', {}, can('operator') ? el('button', {
        type: 'button', class: enabled ? 'danger' : 'primary', text: enabled ? 'Disable (drain)' : 'Enable',
        onclick: () => act(verb + ' ' + b.id, () => api('POST', 'backends/' + encodeURIComponent(b.id) + '/' + verb)),
      }) : null));
  });
  return [
    el('h2', { text: 'Backends' }),
    table(['pool', 'address', 'weight', 'health', 'state', 'in flight', 'requests', 'failures', ''], rows, 'backends'),
  ];
}

// ---- audit -----------------------------------------------------------------------------

async function audit() {
  let verified;
  try {
    const v = await api('GET', 'audit/verify');
    verified = el('p', { class: 'ok', id: 'audit-verify', text: 'Chain intact: ' + v.entries + ' entries verified.' });
  } catch (e) {
    if (e.status === 401) throw e;
    verified = el('p', { class: 'bad', id: 'audit-verify', text: 'Chain broken: ' + e.message });
  }
  const log = await api('GET', 'audit?limit=200');
  const rows = log.entries.slice().reverse().map((e) => el('tr', {},
    el('td', { text: e.time }), el('td', { text: e.actor }), el('td', { text: e.action }),
    el('td', { text: e.target }), el('td', { class: e.outcome === 'ok' ? '' : 'warn', text: e.outcome }),
    el('td', { text: e.detail })));
  return [el('h2', { text: 'Audit log' }), verified,
    table(['time', 'actor', 'action', 'target', 'outcome', 'detail'], rows, 'audit')];
}

// ---- start -----------------------------------------------------------------------------

$('login-form').addEventListener('submit', login);
$('logout').addEventListener('click', logout);
$('password-open').addEventListener('click', () => { $('password').hidden = false; });
$('password-cancel').addEventListener('click', () => { $('password').hidden = true; });
$('password-form').addEventListener('submit', changePassword);
window.addEventListener('hashchange', () => { notice(''); render(); });

(async () => {
  const s = await api('GET', 'session').catch(() => null);
  if (s && s.logged_in) {
    state.session = s;
    started();
  } else {
    showLogin('');
  }
})();
