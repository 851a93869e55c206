// pgtaskd console: the task list — filters (state, group, topic, node, text in command/params,
// created from/to) kept in the URL fragment, pages by keyset (`before=<id>`; "newer" walks back
// the cursors seen), each row linking to its task.
'use strict';
(function () {
  var h = PG.h;
  var STATES = ['DR', 'AW', 'AE', 'AC', 'CS', 'CF', 'CC'];
  var FIELDS = ['group', 'topic', 'node', 'q', 'from', 'to'];

  // datetime-local ("2026-12-01T15:00") ⇄ RFC 3339 in UTC
  function toRfc(v) { return v ? v + ':00Z' : ''; }
  function fromRfc(v) { return v ? v.replace(/:00Z$/, '').replace(/Z$/, '') : ''; }

  function filterForm(params) {
    var chosen = (params.get('state') || '').split(',').filter(Boolean);
    var boxes = STATES.map(function (s) {
      return h('label', {class: 'chk'}, h('input', {type: 'checkbox', name: 'state', value: s,
                                                   checked: chosen.indexOf(s) >= 0}), PG.stateBadge(s));
    });
    function field(name, label, type, ph) {
      var v = params.get(name) || '';
      if (type === 'datetime-local') v = fromRfc(v);
      return h('label', null, label, h('input', {name: name, id: 'f-' + name, type: type || 'text',
                                                 placeholder: ph || '', value: v}));
    }
    var form = h('form', {id: 'filters', class: 'filters'},
      h('div', {class: 'states'}, boxes),
      field('group', 'group', 'number'), field('topic', 'topic'), field('node', 'node', 'number'),
      field('q', 'text', 'search', 'in command or params'),
      field('from', 'created from (UTC)', 'datetime-local'), field('to', 'to', 'datetime-local'),
      h('button', {type: 'submit', id: 'apply'}, 'Filter'),
      h('a', {href: '#/tasks', class: 'button'}, 'Clear'));
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      var p = new URLSearchParams();
      var st = Array.prototype.filter.call(form.querySelectorAll('input[name=state]'), function (c) { return c.checked; })
        .map(function (c) { return c.value; });
      if (st.length) p.set('state', st.join(','));
      FIELDS.forEach(function (f) {
        var v = form.elements[f].value.trim();
        if (f === 'from' || f === 'to') v = toRfc(v);
        if (v) p.set(f, v);
      });
      PG.go('tasks', p);
    });
    return form;
  }

  function row(t) {
    var link = '#/task/' + t.id;
    return h('tr', {class: 'task', dataset: {taskId: t.id, state: t.state_id}},
      h('td', {class: 'num'}, h('a', {href: link}, t.id)), h('td', null, PG.stateBadge(t.state_id)),
      h('td', {class: 'num'}, t.group_id), h('td', {class: 'num'}, PG.dash(t.worker_id)),
      h('td', {class: 'num'}, t.priority), h('td', {class: 'num'}, t.attempt + '/' + t.max_attempts),
      h('td', null, PG.time(t.created)),
      h('td', {class: 'num'}, t.exit_code !== null ? t.exit_code : t.exit_signal !== null ? 'sig ' + t.exit_signal : '-'),
      h('td', {class: 'cmd'}, h('a', {href: link}, PG.command(t))),
      h('td', {class: 'err'}, PG.dash(t.error)));
  }

  PG.views.tasks = function (_parts, params) {
    var q = new URLSearchParams(params);
    q.delete('prev');
    PG.api('GET', '/tasks/search?' + q.toString() + (q.has('limit') ? '' : '&limit=50'))
      .then(function (page) {
        var prev = (params.get('prev') || '').split(',').filter(Boolean);
        var nav = h('div', {class: 'pager'});
        if (params.has('before')) {
          var back = new URLSearchParams(params);
          var last = prev.pop();
          if (last && last !== 'top') back.set('before', last); else back.delete('before');
          if (prev.length) back.set('prev', prev.join(',')); else back.delete('prev');
          nav.appendChild(h('a', {href: '#/tasks?' + back.toString(), id: 'newer', class: 'button'}, '← newer'));
        }
        if (page.next !== null) {
          var fwd = new URLSearchParams(params);
          var trail = (params.get('prev') || '').split(',').filter(Boolean);
          trail.push(params.get('before') || 'top');
          fwd.set('prev', trail.join(','));
          fwd.set('before', page.next);
          nav.appendChild(h('a', {href: '#/tasks?' + fwd.toString(), id: 'older', class: 'button'}, 'older →'));
        }
        var head = ['id', 'state', 'group', 'node', 'prio', 'attempt', 'created', 'exit', 'command', 'error'];
        PG.show(
          h('h2', null, 'Tasks'), filterForm(params),
          h('table', {id: 'tasks'},
            h('thead', null, h('tr', null, head.map(function (c) { return h('th', null, c); }))),
            h('tbody', null, page.tasks.length ? page.tasks.map(row)
              : h('tr', null, h('td', {class: 'empty', colspan: head.length}, 'no task matches')))),
          h('div', {class: 'muted'}, page.tasks.length + ' task(s) on this page, newest first'), nav);
      })
      .catch(PG.fail);
  };
})();
