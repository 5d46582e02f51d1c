'use strict';
/* Live trends: one gateway's channel over a period, from the archive's per-minute (per-hour for
 * long periods) aggregates, with the profile's limits drawn in; refreshed while open. */
suido.start('trends', async () => {
  const { el, $, clear, api, num } = suido;
  const params = new URLSearchParams(location.search);
  const gwSel = $('gateway'), chSel = $('channel'), spanSel = $('span');
  const overview = await api('/api/overview');
  const gws = overview.gateways.filter((g) => g.state !== 'disposed').map((g) => g.id).sort();
  for (const id of gws) gwSel.append(el('option', { value: id, text: id }));
  if (params.get('gateway') && gws.includes(params.get('gateway'))) gwSel.value = params.get('gateway');
  async function channels() {
    const c = await api('/api/channels?gateway=' + encodeURIComponent(gwSel.value));
    clear(chSel);
    for (const ch of c.channels) chSel.append(el('option', { value: ch.id, text: `${ch.name} (${ch.unit})` }));
    const want = params.get('channel');
    if (want && c.channels.some((ch) => ch.id === want)) chSel.value = want;
  }
  let timer = null;
  async function draw() {
    if (!gwSel.value || !chSel.value) return;
    const t = await api(`/api/trend?gateway=${encodeURIComponent(gwSel.value)}&channel=${encodeURIComponent(chSel.value)}&span=${spanSel.value}`);
    if (t.confidential) {
      /* kept only encrypted: the archive stores no trend of it */
      clearInterval(timer);
      clear($('stats')).append(el('div', { class: 'stat', id: 'confidential' }, el('div', { class: 'v', text: 'confidential' }), el('div', { class: 'k', text: t.detail })));
      clear($('chart'));
      return;
    }
    const stat = (id, v, k) => el('div', { class: 'stat', id }, el('div', { class: 'v', text: v }), el('div', { class: 'k', text: k }));
    const lim = t.channel.limits;
    let state = 'no limits';
    if (lim && t.last !== null) {
      state = t.last <= lim.ll || t.last >= lim.hh ? 'beyond LL/HH' : t.last <= lim.l || t.last >= lim.h ? 'beyond L/H' : 'within limits';
    }
    clear($('stats')).append(
      stat('latest', t.last === null ? '–' : `${num(t.last)} ${t.channel.unit}`, 'newest reading'),
      stat('latest-time', suido.time(t.last_ms), 'at (gateway clock)'),
      stat('readings', String(t.readings), 'readings in the period'),
      stat('state', state, 'against the profile'),
      stat('step', t.step_s >= 3600 ? `${t.step_s / 3600} h` : `${t.step_s / 60} min`, 'per point'));
    $('readings').dataset.count = String(t.readings);
    $('latest').dataset.ts = String(t.last_ms);
    suido.trendChart($('chart'), t);
    clearInterval(timer);
    timer = setInterval(() => draw().catch(suido.showError), Number(spanSel.value) <= 21600 ? 2000 : 30000);
    const url = `/trends?gateway=${encodeURIComponent(gwSel.value)}&channel=${encodeURIComponent(chSel.value)}`;
    history.replaceState(null, '', url);
  }
  gwSel.addEventListener('change', async () => { params.delete('channel'); await channels(); await draw(); });
  chSel.addEventListener('change', draw);
  spanSel.addEventListener('change', draw);
  if (gws.length) {
    await channels();
    await draw();
  }
});
