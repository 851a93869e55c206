// pgtaskd console: the shared core. Builds the DOM with textContent only (no HTML from data),
// talks to the node's JSON API with the session's bearer token, routes by the URL fragment
// (#/ overview, #/tasks?…, #/task/<id>), and asks before any change (the confirm dialog).
'use strict';

var PG = window.PG = {};
var TOKEN_KEY = 'pgtaskd_token';

// h('td', {class: 'x', dataset: {taskId: 1}, onclick: f}, 'text', child…)
PG.h = function (tag, attrs) {
  var el = document.createElement(tag);
  var a = attrs || {};
  Object.keys(a).forEach(function (k) {
    var v = a[k];
    if (v === undefined || v === null || v === false) return;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.keys(v).forEach(function (d) { el.dataset[d] = v[d]; });
    else if (k.indexOf('on') === 0) el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  });
  for (var i = 2; i < arguments.length; i++) PG.append(el, arguments[i]);
  return el;
};
PG.append = function (el, child) {
  if (child === undefined || child === null || child === false) return;
  if (Array.isArray(child)) { child.forEach(function (c) { PG.append(el, c); }); return; }
  el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
};
var h = PG.h;

PG.dash = function (v) { return v === null || v === undefined || v === '' ? '-' : String(v); };
PG.secs = function (s) {
  if (s === null || s === undefined) return '-';
  if (s < 1) return (s * 1000).toFixed(0) + ' ms';
  if (s < 120) return s.toFixed(1) + ' s';
  if (s < 7200) return (s / 60).toFixed(1) + ' min';
  if (s < 172800) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' d';
};
PG.bytes = function (b) {
  if (b === null || b === undefined) return '-';
  var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + ' ' + u[i];
};
// "2026-12-01T15:33:28.123+00:00" → "2026-12-01 15:33:28" (UTC, as the database says)
PG.time = function (t) {
  if (!t) return '-';
  var d = new Date(t);
  if (isNaN(d)) return String(t);
  return d.toISOString().replace('T', ' ').slice(0, 19);
};
PG.ago = function (t, now) {
  if (!t) return '';
  var s = ((now ? new Date(now) : new Date()) - new Date(t)) / 1000;
  return s >= 0 ? PG.secs(s) + ' ago' : 'in ' + PG.secs(-s);
};
PG.stateBadge = function (s) { return h('span', {class: 'state st-' + s}, s); };
PG.command = function (t) {
  if (t.command) return t.command.join(' ');
  return t.topic ? 'topic ' + t.topic : '';
};

// ---- the token ------------------------------------------------------------------------------
PG.token = function () { return sessionStorage.getItem(TOKEN_KEY); };
// A link's `#token=…` (at load, or pasted into an open tab): kept, and taken off the address bar.
PG.takeTokenFromLink = function () {
  var m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + '#/');
  }
};
PG.takeTokenFromLink();

function askToken(text) {
  var i = h('input', {type: 'password', placeholder: 'token', autocomplete: 'off', id: 'token-input'});
  var f = h('form', {id: 'token-form'}, i, h('button', {type: 'submit'}, 'open'));
  f.addEventListener('submit', function (e) {
    e.preventDefault();
    if (i.value) { sessionStorage.setItem(TOKEN_KEY, i.value); PG.route(); }
  });
  PG.show(h('p', {class: 'bad', id: 'auth'}, text), f);
  i.focus();
}

// Every request: JSON in and out, the token as a bearer header. Resolves to the parsed body;
// rejects with {status, message}. A refused token on a read asks for another.
PG.api = function (method, path, body) {
  var headers = {};
  var t = PG.token();
  if (t) headers.Authorization = 'Bearer ' + t;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return fetch(path, {method: method, headers: headers,
                      body: body === undefined ? undefined : JSON.stringify(body)})
    .then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = {error: text}; }
        if (r.ok) return data;
        var err = {status: r.status, message: (data && data.error) || r.statusText};
        if (r.status === 401) {
          sessionStorage.removeItem(TOKEN_KEY);
          askToken(t ? 'the token was refused: enter another' : 'this node needs a read token');
          err.handled = true;
        } else if (r.status === 403 && method === 'GET') {
          askToken('the token was refused: enter another');
          err.handled = true;
        }
        throw err;
      });
    });
};

// ---- messages and the confirm dialog --------------------------------------------------------
PG.flash = function (text, bad) {
  var el = document.getElementById('flash');
  el.textContent = text;
  el.className = bad ? 'bad' : 'ok';
  clearTimeout(PG.flash.timer);
  PG.flash.timer = setTimeout(function () { el.textContent = ''; el.className = ''; }, 8000);
};
PG.fail = function (e) {
  if (e && e.handled) return;
  var m = e && e.message ? e.message : String(e);
  if (e && e.status === 403) m += ' (enter a write token: ';
  PG.flash(m + (e && e.status === 403 ? 'click "token" at the top right)' : ''), true);
};

// Asks `question`; with `input` ({label, value, type}) also asks for a value. Resolves with the
// value (or true) when confirmed; never resolves when cancelled.
PG.confirm = function (question, input) {
  return new Promise(function (resolve) {
    var dlg = document.getElementById('confirm');
    var field = input ? h('input', {id: 'confirm-input', type: input.type || 'number',
                                    value: String(input.value)}) : null;
    var ok = h('button', {id: 'confirm-ok', type: 'submit', class: 'danger'}, 'Confirm');
    var no = h('button', {id: 'confirm-cancel', type: 'button'}, 'Back');
    var form = h('form', {method: 'dialog'},
      h('p', {id: 'confirm-text'}, question),
      field ? h('label', null, input.label + ' ', field) : null,
      h('div', {class: 'buttons'}, no, ok));
    no.addEventListener('click', function () { dlg.close(); });
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      dlg.close();
      resolve(field ? field.value : true);
    });
    dlg.replaceChildren(form);
    dlg.showModal();
    (field || ok).focus();
  });
};

// ---- routing ----------------------------------------------------------------------------------
PG.views = {};
PG.main = function () { return document.getElementById('main'); };
// Replaces the view with `children` (nodes, strings, arrays; null and false skipped).
PG.show = function () {
  var main = PG.main();
  main.replaceChildren();
  for (var i = 0; i < arguments.length; i++) PG.append(main, arguments[i]);
};
PG.timer = null;
// Runs `fn` again after `ms` unless the view changed meanwhile.
PG.again = function (fn, ms) {
  var gen = PG.route.gen;
  clearTimeout(PG.timer);
  PG.timer = setTimeout(function () { if (gen === PG.route.gen) fn(); }, ms);
};
PG.parseHash = function () {
  var hash = location.hash.replace(/^#\/?/, '');
  var q = hash.indexOf('?');
  var path = q < 0 ? hash : hash.slice(0, q);
  var params = new URLSearchParams(q < 0 ? '' : hash.slice(q + 1));
  return {path: path, params: params};
};
PG.go = function (path, params) {
  var qs = params ? params.toString() : '';
  location.hash = '#/' + path + (qs ? '?' + qs : '');
};
PG.route = function () {
  PG.route.gen = (PG.route.gen || 0) + 1;
  clearTimeout(PG.timer);
  PG.takeTokenFromLink();
  var r = PG.parseHash();
  var parts = r.path.split('/');
  var name = parts[0] || 'overview';
  document.querySelectorAll('nav a[data-view]').forEach(function (a) {
    a.classList.toggle('active', a.dataset.view === name);
  });
  var view = PG.views[name] || PG.views.overview;
  view(parts.slice(1), r.params);
};
PG.route.gen = 0;

window.addEventListener('hashchange', PG.route);
window.addEventListener('DOMContentLoaded', function () {
  document.getElementById('token-link').addEventListener('click', function (e) {
    e.preventDefault();
    askToken('enter a token (a write token allows the actions)');
  });
  PG.route();
});
