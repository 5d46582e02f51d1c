'use strict';
/* The planning report for facility consolidation: per site over a period, flows and utilisation
 * against capacity, pump run hours, energy and alarms, with plots and a CSV download. */
suido.start('planning', async () => {
  const { el, $, clear, api, num, day } = suido;
  const params = new URLSearchParams(location.search);
  const today = Date.now();
  $('to').value = params.get('to') || day(today);
  $('from').value = params.get('from') || day(today - 29 * 86400e3);
  const pct = (v) => (v === null ? '–' : `${num(100 * v, 1)} %`);
  async function show() {
    const q = `from=${$('from').value}&to=${$('to').value}`;
    $('csv').setAttribute('href', '/api/planning.csv?' + q);
    const r = await api('/api/planning?' + q);
    const body = clear($('sites').tBodies[0]);
    const util = [], volume = [], pumps = [], alarms = [];
    for (const s of r.sites) {
      const flows = s.flows.length ? s.flows : [null];
      flows.forEach((f, i) => {
        const name = f ? f.channel.split('.').slice(1).join('.') : '–';
        body.append(el('tr', { data: { site: s.site } },
          el('td', { text: i ? '' : s.site }), el('td', { text: i ? '' : s.kind }),
          el('td', { class: 'num', text: i ? '' : pct(s.coverage) }), el('td', { text: name }),
          el('td', { class: 'num', text: f ? num(f.volume_m3, 0) : '–' }), el('td', { class: 'num', text: f ? num(f.mean_ls, 1) : '–' }),
          el('td', { class: 'num', text: f ? num(f.peak_ls, 1) : '–' }), el('td', { class: 'num', text: f ? num(f.capacity_ls, 0) : '–' }),
          el('td', { class: 'num', text: f ? pct(f.util_mean) : '–' }), el('td', { class: 'num', text: f ? pct(f.util_peak) : '–' }),
          el('td', { class: 'num', text: i ? '' : s.pump_hours === null ? '–' : num(s.pump_hours, 1) }),
          el('td', { class: 'num', text: i ? '' : s.energy_kwh === null ? '–' : num(s.energy_kwh, 0) }),
          el('td', { class: 'num', text: i ? '' : `${s.alarms}` })));
        if (f) {
          util.push({ label: `${s.site} ${name}`, bars: [
            { v: 100 * (f.util_mean || 0), cls: '', text: `mean ${pct(f.util_mean)}` },
            { v: 100 * (f.util_peak || 0), cls: 'peak', text: `peak ${pct(f.util_peak)}` }] });
          volume.push({ label: `${s.site} ${name}`, bars: [{ v: f.volume_m3 || 0, text: `${num(f.volume_m3, 0)} m³` }] });
        }
      });
      if (s.pump_hours !== null) pumps.push({ label: s.site, bars: [{ v: s.pump_hours, text: `${num(s.pump_hours, 1)} h` }] });
      alarms.push({ label: s.site, bars: [{ v: s.alarms, cls: s.severe_alarms ? 'alarm' : 'warn', text: `${s.alarms} (${s.severe_alarms} severe)` }] });
    }
    if (!r.sites.length) body.append(el('tr', {}, el('td', { colspan: 13, class: 'muted', text: 'No sites.' })));
    suido.barChart($('util'), util, { max: 100, marker: 100, title: 'utilisation' });
    suido.barChart($('volume'), volume, { title: 'volume' });
    suido.barChart($('pumps'), pumps, { title: 'pump run hours' });
    suido.barChart($('alarms'), alarms, { title: 'alarms' });
    document.body.dataset.report = `${r.from}/${r.to}`;
    history.replaceState(null, '', '/planning?' + q);
  }
  $('show').addEventListener('click', () => show().catch(suido.showError));
  await show();
});
