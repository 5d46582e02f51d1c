'use strict';
/* Overview: every site and gateway — what its data can prove (signed, or transport only),
 * state, online, last seen, the last reading stored,
 * verification failures of the last 24 h, certificate expiry, open alerts — and the live alerts. */
suido.start('overview', async () => {
  const { el, $, clear, api, num, pill, ago, time } = suido;
  async function refresh() {
    const o = await api('/api/overview');
    const gws = o.gateways;
    const online = gws.filter((g) => g.online).length;
    const active = gws.filter((g) => g.state === 'active').length;
    const open = gws.reduce((n, g) => n + g.open_alerts, 0);
    const severe = gws.reduce((n, g) => n + g.severe_alerts, 0);
    const refusals = gws.reduce((n, g) => n + g.refusals_24h, 0);
    const expiring = gws.filter((g) => g.cert_days_left !== null && g.cert_days_left < 30).length;
    const card = (id, v, k, bad) => el('div', { class: 'card' + (bad ? ' bad' : ''), id },
                                       el('div', { class: 'v', text: v }), el('div', { class: 'k', text: k }));
    clear($('cards')).append(
      card('card-online', `${online} / ${active}`, 'gateways online', online < active),
      card('card-alerts', open, 'open alerts', severe > 0),
      card('card-refusals', refusals, 'refusals in 24 h', refusals > 0),
      card('card-certs', expiring, 'certificates < 30 days', expiring > 0));
    const body = clear($('gateways').tBodies[0]);
    const bySite = new Map();
    for (const g of gws) {
      if (!bySite.has(g.site)) bySite.set(g.site, []);
      bySite.get(g.site).push(g);
    }
    for (const site of [...bySite.keys()].sort()) {
      body.append(el('tr', { class: 'site-head' }, el('td', { colspan: 10, text: site })));
      for (const g of bySite.get(site)) {
        const cert = g.cert_days_left === null ? '–' : `${g.cert_days_left} days`;
        const tr = el('tr', { class: 'clickable', data: { gateway: g.id }, onclick: () => { location.href = '/trends?gateway=' + encodeURIComponent(g.id); } },
          el('td', {}, el('a', { href: '/trends?gateway=' + encodeURIComponent(g.id), text: g.id })),
          el('td', { text: g.kind }),
          el('td', { class: 'provenance', title: g.provenance === 'signed'
            ? 'every batch signed by the gateway: re-verifiable for ever'
            : 'a Sparkplug B node: authenticated by its TLS identity at the broker, not signed' },
             pill(g.provenance === 'signed' ? 'signed' : 'transport (Sparkplug)',
                  g.provenance === 'signed' ? 'ok' : 'warn')),
          el('td', {}, pill(g.state, g.state === 'active' ? 'ok' : g.state === 'provisioned' ? 'info' : 'bad')),
          el('td', { class: 'online' }, pill(g.online ? 'online' : 'offline', g.online ? 'ok' : 'off')),
          el('td', { text: ago(g.last_seen_ms, o.now_ms), title: suido.datetime(g.last_seen_ms) }),
          el('td', { text: g.last_reading_ms ? time(g.last_reading_ms) : '–' }),
          el('td', { class: 'num' }, g.refusals_24h ? pill(String(g.refusals_24h), 'bad') : '0'),
          el('td', {}, pill(cert, g.cert_days_left === null ? 'off' : g.cert_days_left < 7 ? 'critical' : g.cert_days_left < 30 ? 'warn' : 'ok')),
          el('td', { class: 'num' }, g.open_alerts ? pill(String(g.open_alerts), g.severe_alerts ? 'alarm' : 'warn') : '0'));
        body.append(tr);
      }
    }
    document.body.dataset.gateways = String(gws.length);
  }
  let after = 0;
  const feed = [];
  async function live() {
    const r = await api('/api/alerts/live?after=' + after);
    if (r.last < after) after = 0;
    for (const a of r.alerts) { feed.unshift(a); after = a.seq; }
    feed.splice(12);
    const ul = clear($('feed'));
    if (!feed.length) ul.append(el('li', { class: 'muted', text: 'No alerts since the monitor started.' }));
    for (const a of feed)
      ul.append(el('li', {}, pill(a.cleared ? 'cleared' : a.severity, a.cleared ? 'ok' : a.severity), ' ',
                   el('strong', { text: `${a.site} · ${a.gateway} · ${a.channel}` }), ' ',
                   el('span', { text: a.evidence }), ' ', el('span', { class: 'muted', text: time(a.received_ms) })));
  }
  suido.every(5000, refresh);
  suido.every(3000, live);
});
