// pgtaskd console: the charts, drawn as inline SVG (no library) from GET /charts — attempts
// started per minute by group, tasks finished per minute by outcome, dispatch-latency
// percentiles per minute, queue depth per minute by group (the coordinators' samples).
'use strict';
(function () {
  var NS = 'http://www.w3.org/2000/svg';
  var W = 460, H = 150, L = 40, R = 8, T = 10, B = 22;
  var STATE_COLOURS = {CS: '#2e8540', CF: '#c0392b', CC: '#d68910', retry: '#8e44ad'};
  var PALETTE = ['#2874a6', '#17a589', '#a04000', '#7d3c98', '#b7950b', '#566573'];

  function s(tag, attrs, text) {
    var el = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function slot(data, minute) {
    return Math.round((new Date(minute) - new Date(data.since)) / 60000);
  }

  // a count on the axis: whole, or one decimal for the half of an odd top
  function count(v) { return v === Math.round(v) ? String(v) : v.toFixed(1); }

  function nice(max) {
    if (max <= 0) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(max)));
    var m = max / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function frame(svg, data, top, fmt) {
    var n = data.minutes;
    [0, 0.5, 1].forEach(function (f) {
      var y = T + (H - T - B) * (1 - f);
      svg.appendChild(s('line', {x1: L, x2: W - R, y1: y, y2: y, class: 'grid'}));
      svg.appendChild(s('text', {x: L - 4, y: y + 4, 'text-anchor': 'end', class: 'tick'}, fmt(top * f)));
    });
    [0, Math.floor(n / 2), n - 1].forEach(function (i, k) {
      var t = new Date(new Date(data.since).getTime() + i * 60000);
      var x = L + (W - L - R) * (i + 0.5) / n;
      svg.appendChild(s('text', {x: x, y: H - 6, 'text-anchor': ['start', 'middle', 'end'][k], class: 'tick'},
                        t.toISOString().slice(11, 16)));
    });
  }

  function legend(keys, colour) {
    var div = document.createElement('div');
    div.className = 'legend';
    keys.forEach(function (k) {
      var sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = colour(k);
      div.appendChild(sw);
      div.appendChild(document.createTextNode(k + ' '));
    });
    return div;
  }

  // stacked bars: rows [{minute, key, n}]
  function bars(id, title, data, rows, colour) {
    var n = data.minutes, keys = [], stack = [];
    for (var i = 0; i < n; i++) stack.push({});
    rows.forEach(function (r) {
      var i = slot(data, r.minute);
      if (i < 0 || i >= n) return;
      if (keys.indexOf(r.key) < 0) keys.push(r.key);
      stack[i][r.key] = (stack[i][r.key] || 0) + r.n;
    });
    keys.sort();
    var max = Math.max.apply(null, stack.map(function (m) {
      return Object.keys(m).reduce(function (a, k) { return a + m[k]; }, 0);
    }).concat([0]));
    var top = nice(max);
    var svg = s('svg', {viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img', 'aria-label': title});
    frame(svg, data, top, count);
    var bw = (W - L - R) / n;
    stack.forEach(function (m, i) {
      var y = H - B;
      keys.forEach(function (k) {
        if (!m[k]) return;
        var hgt = (H - T - B) * m[k] / top;
        y -= hgt;
        var rect = s('rect', {x: L + i * bw + 0.5, y: y, width: Math.max(bw - 1, 1), height: hgt,
                              fill: colour(k), class: 'bar', 'data-key': k, 'data-n': m[k]});
        rect.appendChild(s('title', {}, k + ': ' + m[k]));
        svg.appendChild(rect);
      });
    });
    return figure(id, title, svg, legend(keys, colour), rows.length);
  }

  // lines: series {key: [{i, v}]}
  function lines(id, title, data, series, colour, fmt) {
    var keys = Object.keys(series).sort(), n = data.minutes, max = 0;
    keys.forEach(function (k) { series[k].forEach(function (p) { max = Math.max(max, p.v); }); });
    var top = nice(max);
    var svg = s('svg', {viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img', 'aria-label': title});
    frame(svg, data, top, fmt);
    var points = 0;
    keys.forEach(function (k) {
      var pts = series[k].filter(function (p) { return p.i >= 0 && p.i < n; }).map(function (p) {
        points++;
        return [L + (W - L - R) * (p.i + 0.5) / n, T + (H - T - B) * (1 - p.v / top)];
      });
      if (!pts.length) return;
      svg.appendChild(s('polyline', {points: pts.map(function (p) { return p.join(','); }).join(' '),
                                     fill: 'none', stroke: colour(k), 'stroke-width': 2, class: 'line', 'data-key': k}));
      pts.forEach(function (p) { svg.appendChild(s('circle', {cx: p[0], cy: p[1], r: 2.2, fill: colour(k)})); });
    });
    return figure(id, title, svg, legend(keys, colour), points);
  }

  function figure(id, title, svg, leg, points) {
    var f = document.createElement('figure');
    f.id = id;
    f.className = 'chart-box';
    f.dataset.points = points;
    var c = document.createElement('figcaption');
    c.textContent = title;
    f.appendChild(c);
    f.appendChild(svg);
    f.appendChild(leg);
    return f;
  }

  function byIndex() {
    var seen = {};
    return function (k) {
      if (!(k in seen)) seen[k] = PALETTE[Object.keys(seen).length % PALETTE.length];
      return seen[k];
    };
  }

  PG.charts = function (data) {
    var groupColour = byIndex();
    var started = bars('chart-started', 'Attempts started per minute, by group', data,
      data.started.map(function (r) { return {minute: r.minute, key: 'group ' + r.group_id, n: r.n}; }), groupColour);
    var groups = {};
    data.finished.forEach(function (r) { groups[r.group_id] = true; });
    var several = Object.keys(groups).length > 1;
    var finished = bars('chart-finished', 'Finished per minute, by outcome', data,
      data.finished.map(function (r) {
        return {minute: r.minute, key: r.state + (several ? ' g' + r.group_id : ''), n: r.n};
      }), function (k) { return STATE_COLOURS[k.split(' ')[0]] || '#888'; });
    var lat = {p50: [], p90: [], p99: []};
    data.latency.forEach(function (r) {
      var i = slot(data, r.minute);
      lat.p50.push({i: i, v: r.p50}); lat.p90.push({i: i, v: r.p90}); lat.p99.push({i: i, v: r.p99});
    });
    var latency = lines('chart-latency', 'Dispatch latency (wait before start), percentiles', data, lat,
      function (k) { return {p50: '#2874a6', p90: '#d68910', p99: '#c0392b'}[k]; }, PG.secs);
    var depth = {};
    data.queue.forEach(function (r) {
      var k = 'group ' + r.group_id;
      (depth[k] = depth[k] || []).push({i: slot(data, r.minute), v: r.waiting});
    });
    var queue = lines('chart-queue', 'Queue depth (waiting), sampled each minute', data, depth, groupColour,
      count);
    var wrap = document.createElement('section');
    wrap.className = 'charts';
    wrap.id = 'charts';
    [started, finished, latency, queue].forEach(function (f) { wrap.appendChild(f); });
    return wrap;
  };
})();
