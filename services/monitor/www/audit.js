'use strict';
/* The audit log (admins): newest entries first, and the check of its hash chain. */
suido.start('audit', async () => {
  const { el, $, clear, api, datetime } = suido;
  let oldest = 0;
  async function load(more) {
    const r = await api('/api/audit' + (more && oldest ? '?before=' + oldest : ''));
    const body = $('audit').tBodies[0];
    if (!more) clear(body);
    for (const e of r.entries) {
      body.append(el('tr', { data: { event: e.event } }, el('td', { class: 'num', text: e.seq }), el('td', { text: datetime(e.ts_ms) }),
        el('td', { text: e.source }), el('td', { text: e.event }), el('td', { text: e.subject }), el('td', { text: e.actor }),
        el('td', { class: 'mono', text: e.detail })));
      oldest = e.seq;
    }
    $('older').disabled = r.entries.length < 200;
  }
  $('check').addEventListener('click', async () => {
    const out = $('chain');
    out.className = 'chain';
    out.textContent = 'checking…';
    try {
      const r = await api('/api/audit/verify');
      out.className = 'chain ' + (r.intact ? 'ok' : 'bad');
      out.textContent = r.intact ? `intact: ${r.entries} entries` : `BROKEN at entry ${r.first_bad_seq}: ${r.problem} (${r.entries} good before it)`;
      $('head').textContent = 'head: ' + r.head;
    } catch (e) {
      out.className = 'chain bad';
      out.textContent = e.message;
    }
  });
  $('older').addEventListener('click', () => load(true).catch(suido.showError));
  await load(false);
});
