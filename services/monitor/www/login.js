'use strict';
/* The login form: a pre-login session gives the form its CSRF token; password and code go to the
 * monitor, which asks the registry (its lockout applies). On success the monitor sets a new
 * session cookie and the overview opens. */
(() => {
  const form = document.getElementById('login');
  const msg = document.getElementById('message');
  let csrf = '';
  async function token() {
    const r = await fetch('/api/login', { credentials: 'same-origin', cache: 'no-store' });
    csrf = (await r.json()).csrf;
    document.body.dataset.ready = '1';
  }
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = '';
    const body = {
      operator: document.getElementById('operator').value.trim(),
      password: document.getElementById('password').value,
      totp: document.getElementById('totp').value.trim(),
    };
    document.getElementById('submit').disabled = true;
    try {
      const r = await fetch('/api/login', {
        method: 'POST', credentials: 'same-origin', cache: 'no-store',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
        body: JSON.stringify(body),
      });
      const data = await r.json().catch(() => ({}));
      if (r.ok) {
        location.href = '/overview';
        return;
      }
      msg.textContent = data.error || ('refused (' + r.status + ')');
      document.getElementById('password').value = '';
      document.getElementById('totp').value = '';
      await token(); /* a failed form is used up */
    } catch (e) {
      msg.textContent = 'the monitor did not answer';
    } finally {
      document.getElementById('submit').disabled = false;
    }
  });
  token().catch(() => { msg.textContent = 'the monitor did not answer'; });
})();
