'use strict';
/* Alerts: the open cases (or all), one case with the past cases of its kind on its asset, the
 * lifecycle actions for operators (acknowledge; close with cause and action once the condition
 * has cleared), and the live alert stream. */
suido.start('alerts', async () => {
  const { el, $, clear, api, pill, datetime, time } = suido;
  let selected = Number(new URLSearchParams(location.search).get('id')) || 0;
  async function list() {
    const r = await api('/api/alerts?all=' + ($('all').checked ? 1 : 0));
    const body = clear($('cases').tBodies[0]);
    if (!r.cases.length) body.append(el('tr', {}, el('td', { colspan: 10, class: 'muted', text: 'No open cases.' })));
    for (const c of r.cases) {
      body.append(el('tr', { class: 'clickable' + (c.case_id === selected ? ' selected' : ''), data: { case: c.case_id, alert: c.alert_id },
                             onclick: () => { selected = c.case_id; $('action-message').textContent = ''; show().catch(suido.showError); list().catch(suido.showError); } },
        el('td', { text: '#' + c.case_id }), el('td', {}, pill(c.severity, c.severity)),
        el('td', { text: c.site }), el('td', { text: c.gateway }), el('td', { text: c.channel }),
        el('td', { text: c.rule }), el('td', { class: 'state' }, pill(c.state, c.state === 'closed' ? 'off' : c.state === 'raised' ? 'alarm' : 'info')),
        el('td', {}, pill(c.active ? 'active' : 'cleared', c.active ? 'bad' : 'ok')),
        el('td', { text: datetime(c.raised_ms) }), el('td', { class: 'num', text: c.occurrences })));
    }
  }
  async function show() {
    const msg = $('action-message');
    if (!selected) { clear($('detail')).append(el('p', { class: 'muted', text: 'Choose a case.' })); return; }
    const r = await api('/api/alert?id=' + selected);
    // the old detail stays until the new one is complete: no empty moment while fetching
    const box = clear($('detail'));
    const c = r.case;
    const kv = el('dl', { class: 'kv', id: 'case' });
    const row = (k, v) => kv.append(el('dt', { text: k }), el('dd', { text: v }));
    row('Case', '#' + c.case_id); row('Alert', c.alert_id); row('Site', c.site);
    row('Severity', c.severity); row('State', c.state); row('Condition', c.active ? 'active' : 'cleared');
    row('Raised', datetime(c.raised_ms)); row('Occurrences', c.occurrences); row('Evidence', c.evidence);
    if (c.acked_by) row('Acknowledged', `${c.acked_by}, ${datetime(c.acked_ms)}`);
    if (c.closed_by) { row('Closed', `${c.closed_by}, ${datetime(c.closed_ms)}`); row('Cause', c.cause); row('Action', c.action); }
    box.append(kv);
    box.append(el('h2', { text: `Past cases of this kind on this asset (${r.past.length})` }));
    const past = el('ul', { class: 'past', id: 'past' });
    if (!r.past.length) past.append(el('li', { class: 'muted', text: 'None: this is the first.' }));
    for (const p of r.past)
      past.append(el('li', {}, el('strong', { text: `${datetime(p.closed_ms)} by ${p.closed_by}: ` }),
                     el('span', { text: `cause: ${p.cause}; action: ${p.action}` })));
    box.append(past);
    if (!r.may_change || c.state === 'closed') return;
    const ack = el('button', { id: 'ack', text: 'Acknowledge', disabled: c.state !== 'raised' ? '' : null,
      onclick: async () => {
        try { await api('/api/alert/ack', { method: 'POST', body: { case_id: c.case_id } }); msg.className = 'okmsg'; msg.textContent = 'Acknowledged.'; await show(); await list(); }
        catch (e) { msg.className = 'error'; msg.textContent = e.message; }
      } });
    const cause = el('textarea', { id: 'cause', maxlength: 500, placeholder: 'What caused it' });
    const action = el('textarea', { id: 'action', maxlength: 500, placeholder: 'What was done' });
    const close = el('button', { id: 'close', text: 'Close the case', disabled: c.active ? '' : null,
      onclick: async () => {
        try {
          await api('/api/alert/close', { method: 'POST', body: { case_id: c.case_id, cause: cause.value, action: action.value } });
          msg.className = 'okmsg'; msg.textContent = 'Closed.'; await show(); await list();
        } catch (e) { msg.className = 'error'; msg.textContent = e.message; }
      } });
    box.append(el('h2', { text: 'Act' }), el('p', {}, ack),
               el('label', { for: 'cause', text: 'Cause' }), cause, el('label', { for: 'action', text: 'Action taken' }), action,
               el('p', {}, close, ' ', el('span', { class: 'muted', text: c.active ? 'A case closes once its condition has cleared.' : '' })));
  }
  let after = 0;
  const feed = [];
  async function live() {
    const r = await api('/api/alerts/live?after=' + after);
    if (r.last < after) after = 0;
    let changed = false;
    for (const a of r.alerts) { feed.unshift(a); after = a.seq; changed = true; }
    feed.splice(30);
    const ul = clear($('feed'));
    if (!feed.length) ul.append(el('li', { class: 'muted', text: 'No alerts since the monitor started.' }));
    for (const a of feed) {
      const li = el('li', { data: { alert: a.id } }, pill(a.cleared ? 'cleared' : a.severity, a.cleared ? 'ok' : a.severity), ' ',
                    el('strong', { text: `${a.site} · ${a.gateway} · ${a.channel} · ${a.rule}` }), ' ', el('span', { text: a.evidence }), ' ',
                    el('span', { class: 'muted', text: time(a.received_ms) }));
      if (a.past_cases.length) {
        const ul2 = el('ul', { class: 'past' });
        for (const p of a.past_cases) ul2.append(el('li', { class: 'muted', text: p }));
        li.append(ul2);
      }
      ul.append(li);
    }
    if (changed) { await list(); if (selected) await show(); }
  }
  $('all').addEventListener('change', () => list().catch(suido.showError));
  await list();
  await show();
  suido.every(3000, live);
  suido.every(10000, list);
});
