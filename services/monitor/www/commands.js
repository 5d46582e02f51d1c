'use strict';
/* The command gate's requests and decisions: every step of every command (decision, the
 * gateway's result, whether the plant followed), newest first. */
suido.start('commands', async () => {
  const { el, $, clear, api, num, pill, datetime } = suido;
  let oldest = 0;
  async function load(more) {
    const gw = $('gw').value.trim();
    let url = '/api/commands?';
    if (gw) url += 'gateway=' + encodeURIComponent(gw) + '&';
    if (more && oldest) url += 'before=' + oldest;
    const r = await api(url);
    const body = $('commands').tBodies[0];
    if (!more) clear(body);
    if (!r.commands.length && !more) body.append(el('tr', {}, el('td', { colspan: 8, class: 'muted', text: 'No commands yet.' })));
    for (const c of r.commands) {
      const d = c.decision;
      const cls = d.startsWith('refused') || d === 'mismatch' || d === 'unanswered' ? 'bad' : d === 'followed' || d === 'applied' ? 'ok' : 'info';
      body.append(el('tr', { data: { command: c.command_id } }, el('td', { text: datetime(c.ts_ms) }), el('td', { class: 'mono', text: c.command_id }),
        el('td', { text: c.gateway }), el('td', { text: c.actuator }), el('td', { class: 'num', text: `${num(c.value)} ${c.unit}` }),
        el('td', { text: c.requested_by }), el('td', {}, pill(d, cls)), el('td', { text: c.detail })));
      oldest = c.id;
    }
    $('older').disabled = r.commands.length < 200;
  }
  $('filter').addEventListener('click', () => { oldest = 0; load(false).catch(suido.showError); });
  $('older').addEventListener('click', () => load(true).catch(suido.showError));
  await load(false);
});
