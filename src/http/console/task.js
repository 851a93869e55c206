// pgtaskd console: one task — its actions (cancel, re-queue, run a draft now, priority), its
// output tails as the row holds them (re-read every second while the task waits or runs), every
// column, the attempt history, the event log and its dependencies up and down.
'use strict';
(function () {
  var h = PG.h;

  function kv(obj, skip) {
    return h('table', {class: 'kv', id: 'columns'}, h('tbody', null, Object.keys(obj).sort()
      .filter(function (k) { return skip.indexOf(k) < 0; })
      .map(function (k) {
        var v = obj[k];
        var text = v === null ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v);
        return h('tr', null, h('th', null, k), h('td', {class: 'mono', dataset: {column: k}}, text));
      })));
  }

  function act(task, action, label, question, path, body, danger) {
    return h('button', {class: danger ? 'danger' : '', dataset: {action: action}, onclick: function () {
      PG.confirm(question).then(function () {
        return PG.api('POST', path, body).then(function (r) {
          PG.flash('task ' + task.id + ': ' + r.before + ' → ' + r.after);
          PG.route();
        });
      }).catch(PG.fail);
    }}, label);
  }

  function actions(t) {
    var out = [];
    var s = t.state_id;
    if (s === 'DR') out.push(act(t, 'run', 'Run now', 'Queue draft ' + t.id + ' to run now?', '/tasks/' + t.id + '/requeue'));
    if (s === 'DR' || s === 'AW' || s === 'AE') {
      out.push(act(t, 'cancel', 'Cancel', 'Cancel task ' + t.id + (s === 'AE' ? '? Its node kills the process group.' : '?'),
                   '/tasks/' + t.id + '/cancel', undefined, true));
    }
    if (s === 'CS' || s === 'CF' || s === 'CC') {
      out.push(act(t, 'requeue', 'Re-queue', 'Queue task ' + t.id + ' again (a new attempt from a clean outcome)?',
                   '/tasks/' + t.id + '/requeue'));
    }
    out.push(h('button', {dataset: {action: 'priority'}, onclick: function () {
      PG.confirm('Change the priority of task ' + t.id + ' (lower runs first)?', {label: 'priority', value: t.priority})
        .then(function (v) {
          var n = parseInt(v, 10);
          if (isNaN(n)) throw {message: 'the priority must be an integer'};
          return PG.api('POST', '/tasks/' + t.id + '/priority', {priority: n});
        })
        .then(function (r) { PG.flash('task ' + t.id + ' priority: ' + r.before + ' → ' + r.after); PG.route(); })
        .catch(PG.fail);
    }}, 'Priority…'));
    return h('div', {class: 'actions', id: 'task-actions'}, out);
  }

  function output(id, title, text, live) {
    return h('div', {class: 'output'},
      h('h3', null, title, live ? h('span', {class: 'live'}, ' ● live') : null),
      h('pre', {id: id, class: text ? '' : 'muted'}, text || '(nothing yet)'));
  }

  function brief(list, empty) {
    if (!list.length) return h('span', {class: 'muted'}, empty);
    return h('ul', {class: 'deps'}, list.map(function (d) {
      return h('li', {dataset: {taskId: d.id}}, h('a', {href: '#/task/' + d.id}, '#' + d.id), ' ',
               PG.stateBadge(d.state_id), ' ', h('span', {class: 'mono'}, PG.command(d)));
    }));
  }

  function runs(list) {
    var head = ['attempt', 'outcome', 'node', 'started', 'took', 'exit', 'error', 'retry at', 'output'];
    return h('table', {id: 'runs'},
      h('thead', null, h('tr', null, head.map(function (c) { return h('th', null, c); }))),
      h('tbody', null, list.length ? list.map(function (r) {
        var tails = [r.stdout_tail ? h('details', null, h('summary', null, 'stdout'), h('pre', null, r.stdout_tail)) : null,
                     r.stderr_tail ? h('details', null, h('summary', null, 'stderr'), h('pre', null, r.stderr_tail)) : null];
        return h('tr', {class: 'run', dataset: {attempt: r.attempt}},
          h('td', {class: 'num'}, r.attempt), h('td', null, PG.stateBadge(r.state_id)),
          h('td', {class: 'num'}, PG.dash(r.worker_id)), h('td', null, PG.time(r.started)),
          h('td', {class: 'num'}, PG.secs(r.seconds)),
          h('td', {class: 'num'}, r.exit_code !== null ? r.exit_code : r.exit_signal !== null ? 'sig ' + r.exit_signal : '-'),
          h('td', {class: 'err'}, PG.dash(r.error)), h('td', null, PG.time(r.retry_at)), h('td', null, tails));
      }) : h('tr', null, h('td', {class: 'empty', colspan: head.length}, 'no attempt has ended yet'))));
  }

  function events(list) {
    var head = ['at', 'kind', 'by node', 'term', 'detail'];
    return h('table', {id: 'events'},
      h('thead', null, h('tr', null, head.map(function (c) { return h('th', null, c); }))),
      h('tbody', null, list.length ? list.map(function (e) {
        return h('tr', {class: 'event', dataset: {kind: e.kind}},
          h('td', null, PG.time(e.at)), h('td', null, e.kind), h('td', {class: 'num'}, PG.dash(e.by_worker_id)),
          h('td', {class: 'num'}, PG.dash(e.term)), h('td', null, PG.dash(e.detail)));
      }) : h('tr', null, h('td', {class: 'empty', colspan: head.length}, 'no event'))));
  }

  function render(d) {
    var t = d.task;
    var live = t.state_id === 'AE' || t.state_id === 'AC';
    var summary = h('div', {class: 'summary'},
      h('span', null, PG.stateBadge(t.state_id), ' ', t.state_name),
      h('span', null, 'group ' + t.group_id), h('span', null, 'node ' + PG.dash(t.worker_id)),
      h('span', null, 'attempt ' + t.attempt + ' of ' + t.max_attempts), h('span', null, 'priority ' + t.priority),
      h('span', null, 'created ' + PG.time(t.created) + ' (' + PG.ago(t.created, d.now) + ')'),
      t.started ? h('span', null, 'started ' + PG.time(t.started)) : null,
      t.finished ? h('span', null, 'finished ' + PG.time(t.finished)) : null,
      t.error ? h('span', {class: 'bad'}, t.error) : null);
    PG.show(
      h('h2', {id: 'task-title', dataset: {taskId: t.id, state: t.state_id}}, 'Task ' + t.id + ' ',
        h('span', {class: 'mono'}, PG.command(t))),
      summary, actions(t),
      h('section', {class: 'cols'}, output('stdout', 'stdout', t.stdout_tail, live),
        output('stderr', 'stderr', t.stderr_tail, live)),
      h('h3', null, 'Attempts'), runs(d.runs),
      h('h3', null, 'Events'), events(d.events),
      h('section', {class: 'cols'},
        h('div', null, h('h3', null, 'Depends on'), brief(d.depends_on, 'nothing')),
        h('div', null, h('h3', null, 'Depended on by'), brief(d.dependents, 'nothing'))),
      h('h3', null, 'Every column'), kv(t, ['stdout_tail', 'stderr_tail']));
    return t.state_id;
  }

  PG.views.task = function (parts) {
    var id = parseInt(parts[0], 10);
    if (!(id > 0)) { PG.show(h('p', {class: 'bad'}, 'not a task id: ' + parts[0])); return; }
    var again = function () { PG.views.task(parts); };
    PG.api('GET', '/tasks/' + id + '/detail')
      .then(function (d) {
        var s = render(d);
        // the row's output tails while it runs (the node writes them about once a second)
        if (s === 'AE' || s === 'AC') PG.again(again, 1000);
        else if (s === 'AW' || s === 'DR') PG.again(again, 2000);
      })
      .catch(function (e) {
        if (e.status === 404) PG.show(h('p', {class: 'bad'}, 'no task with id ' + id));
        else { PG.fail(e); if (!e.handled) PG.again(again, 2000); }
      });
  };
})();
