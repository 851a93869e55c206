// pgtaskd console: the overview — live nodes (heartbeat, load, memory, running/limit, stop code)
// with their actions (pause, resume, drain, hand over, change the limit), coordinators and terms, each
// group's queue (waiting, running, oldest wait), and the charts. Refreshes every 5 s.
'use strict';
(function () {
  var h = PG.h;

  function table(id, head, rows, empty) {
    return h('table', {id: id},
      h('thead', null, h('tr', null, head.map(function (c) { return h('th', null, c); }))),
      h('tbody', null, rows.length ? rows
        : h('tr', null, h('td', {class: 'empty', colspan: head.length}, empty || 'none'))));
  }

  var STOPS = {0: 'running', 1: 'paused (stop 1)', 2: 'draining (stop 2)', 3: 'cancelling all (stop 3)'};

  function nodeAction(node, label, question, path, body, danger) {
    return h('button', {class: 'small' + (danger ? ' danger' : ''),
                        dataset: {action: label.toLowerCase().replace(/ /g, '-'), nodeId: node.id},
                        onclick: function () {
      PG.confirm(question).then(function () {
        return PG.api('POST', path, body).then(function (r) {
          PG.flash('node ' + node.id + ': ' + r.before + ' → ' + r.after);
          PG.route();
        });
      }).catch(PG.fail);
    }}, label);
  }

  function limitButton(node) {
    return h('button', {class: 'small', dataset: {action: 'limit', nodeId: node.id}, onclick: function () {
      PG.confirm('Change the process limit of node ' + node.id + ' (now ' + node.max_task_count + ')?',
                 {label: 'max tasks', value: node.max_task_count})
        .then(function (v) {
          var n = parseInt(v, 10);
          if (!(n >= 0)) throw {message: 'the limit must be a number, 0 or more'};
          return PG.api('POST', '/nodes/' + node.id + '/limit', {max_task_count: n});
        })
        .then(function (r) { PG.flash('node ' + node.id + ' limit: ' + r.before + ' → ' + r.after); PG.route(); })
        .catch(PG.fail);
    }}, 'limit');
  }

  // POST /nodes/{id}/hand-over (long_task.hand_over_node): kill the node's runs, queue them again
  function handOverButton(node) {
    return h('button', {class: 'small danger', dataset: {action: 'hand-over', nodeId: node.id}, onclick: function () {
      PG.confirm('Hand node ' + node.id + '\u2019s tasks over? It claims nothing from now on (worker.stop = 1); its ' +
                 'running tasks are killed and queued again for the other nodes (pinned ones keep running).')
        .then(function () { return PG.api('POST', '/nodes/' + node.id + '/hand-over', {kill: true}); })
        .then(function (r) {
          PG.flash('node ' + node.id + ' handed over: ' + r.requeued + ' re-queued' +
                   (r.pinned ? ', ' + r.pinned + ' pinned left running' : ''));
          PG.route();
        })
        .catch(PG.fail);
    }}, 'hand over');
  }

  function nodeRow(n, o) {
    var coord = o.coordinators.filter(function (c) { return c.worker_id === n.id; })[0];
    var state = n.low_memory ? h('span', {class: 'bad'}, 'low memory: not claiming')
      : n.stop ? h('span', {class: 'bad'}, STOPS[n.stop] || 'stop ' + n.stop)
      : h('span', {class: 'ok'}, 'alive');
    var actions = [
      n.stop === 0 ? nodeAction(n, 'pause', 'Pause node ' + n.id + '? It finishes its running tasks and claims no new ones (worker.stop = 1).',
                                '/nodes/' + n.id + '/stop', {stop: 1})
                   : nodeAction(n, 'resume', 'Resume node ' + n.id + '? (worker.stop = 0)', '/nodes/' + n.id + '/stop', {stop: 0}),
      n.stop !== 2 ? nodeAction(n, 'drain', 'Drain node ' + n.id + '? It finishes its running tasks, then exits (worker.stop = 2).',
                                '/nodes/' + n.id + '/stop', {stop: 2}, true) : null,
      handOverButton(n),
      limitButton(n)
    ];
    return h('tr', {class: 'node', dataset: {nodeId: n.id}},
      h('td', null, n.id), h('td', null, PG.dash(n.node_name)), h('td', null, PG.dash(n.host)),
      h('td', null, n.group_id), h('td', null, state),
      h('td', {class: 'num'}, n.task_count + ' / ' + n.max_task_count),
      h('td', {class: 'num'}, PG.secs(n.heartbeat_age)),
      h('td', {class: 'num'}, n.load1 === null ? '-' : n.load1.toFixed(2)),
      h('td', {class: 'num'}, n.free_memory === null ? '-' : PG.bytes(n.free_memory) + ' of ' + PG.bytes(n.total_memory)),
      h('td', null, coord ? 'group ' + coord.group_id + ', term ' + coord.term : ''),
      h('td', {class: 'actions'}, actions));
  }

  function groupLink(g, label, state) {
    var p = new URLSearchParams({group: g.group_id});
    if (state) p.set('state', state);
    return h('a', {href: '#/tasks?' + p.toString()}, label);
  }

  function render(o, charts) {
    var live = o.nodes.filter(function (n) { return n.alive; });
    var gone = o.nodes.length - live.length;
    var warnings = [];
    // the node's horizon_warning (seconds), as the status page and `pgtaskd status` use it
    var after = parseFloat(document.body.dataset.horizonWarning) || 60;
    if (o.horizon && o.horizon.age_seconds !== null && o.horizon.age_seconds >= after) {
      warnings.push(h('p', {class: 'bad warning'}, 'warning: a ' + o.horizon.kind + ' (' + PG.dash(o.horizon.holder) +
        ', pid ' + PG.dash(o.horizon.pid) + ') has held the vacuum horizon back ' + PG.secs(o.horizon.age_seconds)));
    }
    var nodes = table('nodes', ['id', 'name', 'host', 'group', 'state', 'tasks', 'heartbeat', 'load',
                                'free memory', 'coordinator', ''],
                      live.map(function (n) { return nodeRow(n, o); }), 'no live node');
    var coords = table('coordinators', ['group', 'node', 'term', 'elected'], o.coordinators.map(function (c) {
      return h('tr', {class: 'coordinator'}, h('td', null, c.group_id), h('td', null, PG.dash(c.worker_id)),
               h('td', {class: 'num'}, c.term), h('td', null, PG.time(c.elected_at)));
    }));
    var groups = table('queues', ['group', 'waiting', 'running', 'drafts', 'scheduled', 'oldest wait', 'live nodes'],
      o.groups.map(function (g) {
        return h('tr', {class: 'queue', dataset: {groupId: g.group_id}},
          h('td', null, groupLink(g, String(g.group_id))),
          h('td', {class: 'num'}, groupLink(g, String(g.waiting), 'AW')),
          h('td', {class: 'num'}, groupLink(g, String(g.running), 'AE,AC')),
          h('td', {class: 'num'}, groupLink(g, String(g.drafts), 'DR')),
          h('td', {class: 'num'}, g.scheduled), h('td', {class: 'num'}, PG.secs(g.oldest_waiting)),
          h('td', {class: 'num'}, g.nodes));
      }));
    PG.show(
      warnings,
      h('h2', null, 'Nodes (' + live.length + ' alive)'), nodes,
      gone ? h('div', {class: 'muted'}, gone + ' stopped or dead node(s) not shown') : null,
      h('section', {class: 'cols'},
        h('div', null, h('h2', null, 'Queues'), groups),
        h('div', null, h('h2', null, 'Coordinators'), coords)),
      h('h2', null, 'Last hour'),
      PG.charts(charts),
      h('div', {class: 'muted'}, 'database time ' + PG.time(o.now) + ' · refreshes every 5 s'));
  }

  PG.views.overview = function () {
    Promise.all([PG.api('GET', '/cluster'), PG.api('GET', '/charts?minutes=60')])
      .then(function (r) { render(r[0], r[1]); PG.again(PG.views.overview, 5000); })
      .catch(function (e) { PG.fail(e); if (!e.handled) PG.again(PG.views.overview, 5000); });
  };
})();
