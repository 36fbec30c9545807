// The console's one script: WebAuthn calls and the JSON calls that carry their answers.
// Everything shown is rendered by the server; this only signs.
'use strict';

const toHex = (buf) =>
  Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

const fromB64u = (s) => {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
};

const toB64u = (buf) =>
  btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');

function say(message, isError) {
  const el = document.getElementById('status');
  el.textContent = message;
  el.className = isError ? 'error' : 'ok';
}

async function post(url, body) {
  const r = await fetch(url, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = answer.error || {};
    throw new Error(`${e.code || r.status}: ${e.message || r.statusText}`);
  }
  return answer;
}

// The passkey signs `challenge`; its answer as the server reads it (hex).
async function assertWith(challenge, rpId, credentialId) {
  const credential = await navigator.credentials.get({
    publicKey: {
      challenge: fromB64u(challenge),
      rpId,
      allowCredentials: [{ type: 'public-key', id: fromB64u(credentialId) }],
      userVerification: 'required',
      timeout: 120000,
    },
  });
  const r = credential.response;
  return {
    authenticator_data_hex: toHex(r.authenticatorData),
    client_data_json_hex: toHex(r.clientDataJSON),
    signature_hex: toHex(r.signature),
  };
}

function on(id, event, handler) {
  const el = document.getElementById(id);
  if (!el) return;
  el.addEventListener(event, async (e) => {
    e.preventDefault();
    try {
      await handler(el);
    } catch (err) {
      say(err.message || String(err), true);
    }
  });
}

on('sign-in', 'submit', async () => {
  const name = document.getElementById('name').value.trim();
  say('Touch your passkey…');
  const c = await post('/console/api/sign-in/begin', { name });
  const answer = await assertWith(c.challenge, c.rp_id, c.credential_id);
  await post('/console/api/sign-in/finish', { name, nonce: c.nonce, answer });
  location.assign('/console');
});

on('sign-out', 'click', async () => {
  await post('/console/api/sign-out', {});
  location.assign('/console');
});

on('approve', 'click', async (button) => {
  const d = button.dataset;
  button.disabled = true;
  say('Touch your passkey to approve…');
  try {
    const answer = await assertWith(d.challenge, d.rpId, d.credential);
    const view = await post(`/console/api/requests/${encodeURIComponent(d.request)}/approve`, answer);
    say(`Approved: the request is ${view.status}.`);
    location.reload();
  } finally {
    button.disabled = false;
  }
});

on('reject', 'click', async (button) => {
  const d = button.dataset;
  if (!window.confirm('Reject this request? It will be refused and cannot be approved any more.')) return;
  button.disabled = true;
  say('Touch your passkey to reject…');
  try {
    const answer = await assertWith(d.challenge, d.rpId, d.credential);
    const view = await post(`/console/api/requests/${encodeURIComponent(d.request)}/reject`, answer);
    say(`Rejected: the request is ${view.status}.`);
    location.reload();
  } finally {
    button.disabled = false;
  }
});

// Registration (custos pki passkey): the operator's options (webauthn-rs JSON, byte
// strings base64url) in, the browser's answer out in the same encoding.
const credentialJson = (c, response) => ({
  id: c.id,
  rawId: toB64u(c.rawId),
  type: c.type,
  extensions: {},
  response,
});

// The credential this page created: the only one it asks for a proof of possession. Options
// naming any other credential would have an already certified passkey sign a challenge
// someone else chose, which could be an approval message's hash.
let created = null;

on('register', 'submit', async () => {
  const o = JSON.parse(document.getElementById('create-options').value).publicKey;
  o.challenge = fromB64u(o.challenge);
  o.user.id = fromB64u(o.user.id);
  (o.excludeCredentials || []).forEach((c) => { c.id = fromB64u(c.id); });
  say('Touch your authenticator to create the passkey…');
  const c = await navigator.credentials.create({ publicKey: o });
  created = c.rawId;
  document.getElementById('registration').value = JSON.stringify(credentialJson(c, {
    attestationObject: toB64u(c.response.attestationObject),
    clientDataJSON: toB64u(c.response.clientDataJSON),
  }));
  const spki = c.response.getPublicKey();
  document.getElementById('fingerprint').value =
    spki ? toHex(await crypto.subtle.digest('SHA-256', spki)) : 'not shown by this browser';
  say('Passkey created: hand the registration to your operator.');
});

on('prove', 'submit', async () => {
  if (created === null) throw new Error('create the passkey on this page first (step 1)');
  const o = JSON.parse(document.getElementById('get-options').value).publicKey;
  const named = (o.allowCredentials || []).map((c) => c.id);
  if (named.length !== 1 || named[0] !== toB64u(created)) {
    throw new Error('these options are not for the passkey this page just created');
  }
  o.challenge = fromB64u(o.challenge);
  o.allowCredentials = [{ type: 'public-key', id: created }];
  say('Touch your authenticator to prove possession…');
  const c = await navigator.credentials.get({ publicKey: o });
  document.getElementById('assertion').value = JSON.stringify(credentialJson(c, {
    authenticatorData: toB64u(c.response.authenticatorData),
    clientDataJSON: toB64u(c.response.clientDataJSON),
    signature: toB64u(c.response.signature),
    userHandle: c.response.userHandle ? toB64u(c.response.userHandle) : null,
  }));
  say('Proof made: hand it to your operator.');
});
