'use strict';
/* suido monitor: what every page shares. The session (operator, role, CSRF token), the API helper
 * that sends the token with every change, the navigation by role, formatting, and small SVG
 * charts. Every value from the server is put into the page as text (textContent) or as an SVG
 * attribute, never parsed as markup. */
const suido = (() => {
  const NAV = [
    ['overview', 'Overview', 1], ['trends', 'Trends', 1], ['alerts', 'Alerts', 1],
    ['planning', 'Planning', 1], ['commands', 'Commands', 2], ['audit', 'Audit log', 3],
  ];
  const RANK = { viewer: 1, operator: 2, admin: 3 };
  const SVG = 'http://www.w3.org/2000/svg';
  let session = null;

  /* el('td', {class: 'num', text: '12'}, child, ...) */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'data') Object.entries(v).forEach(([dk, dv]) => { e.dataset[dk] = String(dv); });
      else e.setAttribute(k, String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  const $ = (id) => document.getElementById(id);
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  async function api(path, opts = {}) {
    const init = { method: opts.method || 'GET', credentials: 'same-origin', cache: 'no-store',
                   headers: { Accept: 'application/json' } };
    if (opts.body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    if (init.method !== 'GET') init.headers['X-CSRF-Token'] = opts.csrf || (session && session.csrf) || '';
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401 && !opts.noRedirect) {
      location.href = '/login';
      throw new Error('log in first');
    }
    if (!r.ok) {
      const err = new Error((data && data.error) || ('HTTP ' + r.status));
      err.status = r.status;
      throw err;
    }
    return data;
  }

  /* ---- formatting */
  const pad = (n) => String(n).padStart(2, '0');
  function time(ms) {
    if (!ms) return '–';
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function datetime(ms) {
    if (!ms) return '–';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time(ms)}`;
  }
  function day(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }
  function ago(ms, now) {
    if (!ms) return 'never';
    const s = Math.max(0, Math.round(((now || Date.now()) - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  function num(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    const a = Math.abs(v);
    const d = digits !== undefined ? digits : a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
    return Number(v).toLocaleString('en-GB', { minimumFractionDigits: d, maximumFractionDigits: d });
  }
  function pill(text, cls) { return el('span', { class: 'pill ' + cls, text }); }
  function may(role) { return session && RANK[session.role] >= RANK[role]; }

  /* ---- navigation, session countdown, logout */
  function buildNav(page) {
    const nav = $('nav');
    clear(nav);
    for (const [id, label, rank] of NAV)
      if (RANK[session.role] >= rank)
        nav.append(el('a', { href: '/' + id, text: label, class: id === page ? 'here' : '' }));
    const who = clear($('who'));
    const left = el('span', { id: 'session-left' });
    who.append(el('span', { id: 'operator', text: session.operator }),
               el('span', { class: 'role', id: 'role', text: session.role }), left,
               el('button', { id: 'logout', text: 'Log out', onclick: logout }));
    const tick = () => {
      const s = Math.max(0, Math.round((session.ends_ms - Date.now()) / 1000));
      left.textContent = `session ${Math.floor(s / 60)}:${pad(s % 60)}`;
    };
    tick();
    setInterval(tick, 1000);
  }
  async function logout() {
    try { await api('/api/logout', { method: 'POST', body: {} }); } catch (e) { /* ended anyway */ }
    location.href = '/login';
  }

  /* Loads the session, builds the page frame, then runs the page. */
  async function start(page, fn) {
    try {
      session = await api('/api/session');
    } catch (e) {
      return;
    }
    buildNav(page);
    document.body.dataset.ready = '1';
    try {
      await fn(session);
    } catch (e) {
      showError(e);
    }
  }
  function showError(e) {
    const box = $('error');
    if (box) box.textContent = e && e.message ? e.message : String(e);
  }
  /* Runs fn every ms while the page is open, reporting failures without stopping. */
  function every(ms, fn) {
    let busy = false;
    const run = async () => {
      if (busy) return;
      busy = true;
      try {
        await fn();
        const box = $('error');
        if (box) box.textContent = '';
      } catch (e) { showError(e); } finally { busy = false; }
    };
    run();
    return setInterval(run, ms);
  }

  /* ---- charts */
  /* About n round values from lo to hi, and the decimals they need. */
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((s) => s >= raw) || raw;
    const values = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) values.push(+v.toFixed(10));
    const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9) + (step / mag === 2.5 ? 1 : 0)));
    return { values, decimals };
  }
  /* A limit or a reading as written in the profile: no trailing zeros. */
  const short = (v) => (v === null || !isFinite(v) ? '–' : String(+Number(v).toPrecision(6)));

  /* A trend: min-max band, mean line, last value, the profile's limits (LL, L, H, HH).
   * t: {points: [[t, count, min, max, mean, last]], from_ms, to_ms, channel: {unit, limits, min, max}} */
  function trendChart(box, t) {
    const W = 960, H = 380, L = 64, R = 84, T = 16, B = 36;
    const pts = t.points.filter((p) => p[4] !== null);
    const lim = t.channel.limits;
    let lo = Infinity, hi = -Infinity;
    for (const p of pts) { lo = Math.min(lo, p[2]); hi = Math.max(hi, p[3]); }
    if (lim) for (const k of ['ll', 'l', 'h', 'hh']) if (lim[k] !== null) { lo = Math.min(lo, lim[k]); hi = Math.max(hi, lim[k]); }
    if (!isFinite(lo)) { lo = t.channel.min; hi = t.channel.max; }
    const padv = (hi - lo) * 0.08 || 1;
    lo -= padv; hi += padv;
    const x = (ms) => L + (W - L - R) * (ms - t.from_ms) / Math.max(1, t.to_ms - t.from_ms);
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
                           'aria-label': `${t.channel.id} over time` });
    const grid = svg('g', { class: 'grid' }), axis = svg('g', { class: 'axis' });
    const ticks = niceTicks(lo, hi, 6);
    for (const v of ticks.values) {
      grid.append(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      axis.append(svg('text', { x: L - 8, y: y(v) + 4, 'text-anchor': 'end' }, num(v, ticks.decimals)));
    }
    const span = t.to_ms - t.from_ms;
    const tstep = [60e3, 300e3, 900e3, 3600e3, 6 * 3600e3, 86400e3, 7 * 86400e3, 30 * 86400e3]
      .find((k) => span / k <= 8) || 90 * 86400e3;
    for (let ms = Math.ceil(t.from_ms / tstep) * tstep; ms <= t.to_ms; ms += tstep) {
      grid.append(svg('line', { x1: x(ms), x2: x(ms), y1: T, y2: H - B }));
      axis.append(svg('text', { x: x(ms), y: H - B + 18, 'text-anchor': 'middle' },
                      span > 2 * 86400e3 ? day(ms) : time(ms).slice(0, 5)));
    }
    axis.append(svg('text', { x: 12, y: T + 4 }, t.channel.unit));
    s.append(grid, axis);
    if (pts.length) {
      const w = Math.max(1, (t.step_s * 1000) / Math.max(1, span) * (W - L - R));
      let band = '';
      for (const p of pts) band += `${x(p[0])},${y(p[3])} `;
      for (const p of pts.slice().reverse()) band += `${x(p[0])},${y(p[2])} `;
      if (pts.length === 1) band = `${x(pts[0][0])},${y(pts[0][3])} ${x(pts[0][0]) + w},${y(pts[0][3])} ${x(pts[0][0]) + w},${y(pts[0][2])} ${x(pts[0][0])},${y(pts[0][2])}`;
      s.append(svg('polygon', { class: 'band', points: band }));
      s.append(svg('polyline', { class: 'mean', points: pts.map((p) => `${x(p[0])},${y(p[4])}`).join(' ') }));
      const lp = pts[pts.length - 1];
      s.append(svg('circle', { class: 'last', cx: x(lp[0]), cy: y(lp[5]), r: 4 }));
    }
    if (lim) {
      for (const k of ['hh', 'h', 'l', 'll']) {
        if (lim[k] === null) continue;
        s.append(svg('line', { class: 'limit-' + k, x1: L, x2: W - R, y1: y(lim[k]), y2: y(lim[k]) }));
        s.append(svg('text', { class: 'limit-label ' + k, x: W - R + 6, y: y(lim[k]) + 4 },
                     `${k.toUpperCase()} ${short(lim[k])}`));
      }
    }
    clear(box).append(s);
  }

  /* Horizontal bars: rows [{label, bars: [{v, cls, text}]}], max: the axis end. */
  function barChart(box, rows, opts) {
    const W = 640, L = 190, R = 110, RH = 30, T = 8;
    const H = T * 2 + rows.length * RH + 20;
    let max = opts.max || 0;
    for (const r of rows) for (const b of r.bars) if (isFinite(b.v)) max = Math.max(max, b.v);
    if (!(max > 0)) max = 1;
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': opts.title || 'bars' });
    rows.forEach((r, i) => {
      const y0 = T + i * RH;
      s.append(svg('text', { class: 'label', x: L - 8, y: y0 + 16, 'text-anchor': 'end' }, r.label));
      const bh = (RH - 8) / r.bars.length;
      r.bars.forEach((b, k) => {
        const w = isFinite(b.v) ? (W - L - R) * b.v / max : 0;
        s.append(svg('rect', { class: 'bar ' + (b.cls || ''), x: L, y: y0 + 3 + k * bh, width: Math.max(0, w), height: bh - 1 }));
        if (b.text) s.append(svg('text', { class: 'value', x: L + w + 6, y: y0 + 3 + k * bh + bh - 2 }, b.text));
      });
    });
    if (opts.marker) {
      const mx = L + (W - L - R) * opts.marker / max;
      s.append(svg('line', { class: 'limit-hh', x1: mx, x2: mx, y1: T, y2: H - 16 }));
    }
    clear(box).append(s);
  }

  return { el, svg, $, clear, api, start, every, time, datetime, day, ago, num, short, pill, may,
           trendChart, barChart, showError, get session() { return session; } };
})();
