/* circuits explorer front end (vanilla JS, no remote requests).
 * 1. List the run's graphs (/api/graphs), load one's summary (/api/graph).
 * 2. Fetch the pruned view for the slider thresholds (/api/pruned), draw it as SVG:
 *    tokens are columns, layers rows (inputs bottom, logits top); update the counts.
 * 3. Node click -> /api/node -> side panel; pin nodes; POST the pinned ids to /api/save.
 * An offline export embeds {summary, view, details} in #explore-data instead of the API.
 * Text from the graph is always set with textContent (never parsed as HTML). */
(function () {
  'use strict';
  var SVGNS = 'http://www.w3.org/2000/svg';
  var S = { path: null, summary: null, view: null, pinned: {}, selected: null, offline: null, timer: null, seq: 0 };
  var COLORS = { feature: '#f4c27a', error: '#c7c7c7', token: '#9ecae1', logit: '#a1d99b' };

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function sv(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function status(text, isError) {
    var s = $('status');
    s.textContent = text || '';
    s.className = isError ? 'error' : '';
    if (isError) { document.body.dataset.error = text; }
  }
  function api(url, opts) {
    return fetch(url, opts).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok) { throw new Error(j.error || ('HTTP ' + r.status)); }
        return j;
      });
    });
  }
  function q(params) {
    return Object.keys(params).map(function (k) {
      return encodeURIComponent(k) + '=' + encodeURIComponent(params[k]);
    }).join('&');
  }
  function fmt(x) { return x === null || x === undefined ? 'n/a' : Number(x).toPrecision(3); }

  // ------------------------------------------------------------ loading
  function init() {
    var data = $('explore-data');
    $('nt').addEventListener('input', onSlider);
    $('et').addEventListener('input', onSlider);
    $('save').addEventListener('click', save);
    if (data) {
      S.offline = JSON.parse(data.textContent);
      S.summary = S.offline.summary;
      S.path = S.summary.path;
      $('graph-label').textContent = 'graph ' + S.path + ' (offline export)';
      $('nt').value = S.offline.view.node_threshold; $('et').value = S.offline.view.edge_threshold;
      $('nt').disabled = true; $('et').disabled = true; $('save').hidden = true;
      showThresholds();
      setView(S.offline.view);
      return;
    }
    api('/api/graphs').then(function (d) {
      var sel = $('graph');
      d.graphs.forEach(function (g) { var o = el('option', g); o.value = g; sel.appendChild(o); });
      sel.addEventListener('change', function () { load(sel.value); });
      if (!d.graphs.length) { status('no graphs found in this run directory', true); return; }
      var first = d.graphs.indexOf('graph') >= 0 ? 'graph' : d.graphs[0];
      sel.value = first;
      load(first);
    }).catch(function (e) { status(e.message, true); });
  }

  function load(path) {
    S.path = path; S.pinned = {}; S.selected = null; updatePins();
    status('loading ' + path + '…');
    api('/api/graph?' + q({ path: path })).then(function (s) {
      S.summary = s;
      refresh();
    }).catch(function (e) { status(e.message, true); });
  }

  function showThresholds() {
    $('nt-val').textContent = Number($('nt').value).toFixed(2);
    $('et-val').textContent = Number($('et').value).toFixed(2);
  }

  function onSlider() {
    showThresholds();
    clearTimeout(S.timer);
    S.timer = setTimeout(refresh, 150);  // pruning runs on the server: wait for the slider to rest
  }

  function refresh() {
    if (S.offline || !S.path) { return; }
    var seq = ++S.seq;
    document.body.dataset.state = 'loading';
    status('pruning…');
    api('/api/pruned?' + q({ path: S.path, node_threshold: $('nt').value, edge_threshold: $('et').value,
                             limit: 1000 })).then(function (v) {
      if (seq === S.seq) { setView(v); }  // ignore answers to older slider positions
    }).catch(function (e) { status(e.message, true); });
  }

  function setView(v) {
    S.view = v;
    var shown = v.nodes.length < v.total_nodes ? ' (showing the ' + v.nodes.length + ' most influential)' : '';
    $('count').textContent = v.total_nodes + ' nodes, ' + v.total_edges + ' edges' + shown;
    draw();
    status('');
    document.body.dataset.state = 'ready';
    document.body.dataset.nodes = String(v.total_nodes);
    document.body.dataset.edges = String(v.total_edges);
  }

  // ------------------------------------------------------------ drawing
  function draw() {
    var svg = $('plot'), v = S.view, s = S.summary;
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var toks = s.tokens, nL = s.n_layers;
    var CW = 96, RH = 70, X0 = 60, Y0 = 20;
    var W = X0 + CW * Math.max(toks.length, 1) + 20, H = Y0 + RH * (nL + 2) + 40;
    svg.setAttribute('width', W); svg.setAttribute('height', H);
    function rowY(layer) { return Y0 + RH * (nL - layer) + RH / 2; }  // logits (layer nL) on top
    var cells = {}, pos = {};
    v.nodes.forEach(function (n) {
      var c = n.layer + ':' + n.pos;
      (cells[c] = cells[c] || []).push(n);
    });
    Object.keys(cells).forEach(function (c) {
      var list = cells[c];
      list.forEach(function (n, j) {
        pos[n.id] = { x: X0 + CW * n.pos + CW * (j + 1) / (list.length + 1), y: rowY(n.layer) };
      });
    });
    for (var l = -1; l <= nL; l++) {
      var t = sv('text', { x: 4, y: rowY(l) + 4, 'class': 'layer' });
      t.textContent = l < 0 ? 'tokens' : (l === nL ? 'logits' : 'L' + l);
      svg.appendChild(t);
    }
    toks.forEach(function (tok, p) {
      var t = sv('text', { x: X0 + CW * p + CW / 2, y: H - 12, 'text-anchor': 'middle', 'class': 'tok' });
      t.textContent = JSON.stringify(tok).slice(1, -1).slice(0, 14);
      svg.appendChild(t);
    });
    var maxw = 0;
    v.edges.forEach(function (e) { maxw = Math.max(maxw, Math.abs(e.weight || 0)); });
    var g = sv('g', { 'class': 'edges' });
    v.edges.forEach(function (e) {
      var a = pos[e.source], b = pos[e.target];
      if (!a || !b) { return; }
      var w = maxw > 0 ? Math.abs(e.weight || 0) / maxw : 0;
      g.appendChild(sv('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: e.weight >= 0 ? '#2c7fb8' : '#d7301f',
                                 'stroke-width': (0.4 + 3.5 * w).toFixed(2), 'stroke-opacity': (0.15 + 0.6 * w).toFixed(2) }));
    });
    svg.appendChild(g);
    v.nodes.forEach(function (n) {
      var p = pos[n.id];
      var cls = 'node' + (S.pinned[n.id] ? ' pinned' : '') + (S.selected === n.id ? ' selected' : '');
      var c = sv('circle', { cx: p.x, cy: p.y, r: n.type === 'feature' ? 6 : 8, fill: COLORS[n.type] || '#ccc',
                             'class': cls, 'data-id': n.id });
      var title = sv('title', {});
      title.textContent = n.id + (n.label ? ' — ' + n.label : '') + ' (influence ' + fmt(n.influence) + ')';
      c.appendChild(title);
      c.addEventListener('click', function () { select(n.id); });
      svg.appendChild(c);
    });
  }

  // ------------------------------------------------------------ panel
  function select(id) {
    S.selected = id;
    draw();
    if (S.offline) {
      var d = S.offline.details[id];
      if (d) { panel(d); } else { status('no detail stored for ' + id, true); }
      return;
    }
    api('/api/node?' + q({ path: S.path, id: id, k: 10 })).then(panel).catch(function (e) { status(e.message, true); });
  }

  function edgeTable(title, rows, key) {
    var box = el('div');
    box.appendChild(el('h4', title));
    var tb = el('table');
    rows.forEach(function (r) {
      var tr = el('tr'), td = el('td'), a = el('a', r[key], 'nid');
      a.addEventListener('click', function () { select(r[key]); });
      td.appendChild(a); tr.appendChild(td); tr.appendChild(el('td', fmt(r.weight), 'w'));
      tb.appendChild(tr);
    });
    box.appendChild(tb);
    return box;
  }

  function panel(d) {
    var p = $('panel'), n = d.node;
    while (p.firstChild) { p.removeChild(p.firstChild); }
    p.dataset.node = n.id;
    p.appendChild(el('h3', n.id));
    var t = el('table');
    [['type', n.type], ['layer', n.layer], ['position', n.pos], ['token', JSON.stringify(n.token)],
     ['activation', fmt(n.activation)], ['label', n.label || '—']].forEach(function (r) {
      var tr = el('tr'); tr.appendChild(el('th', r[0])); tr.appendChild(el('td', r[1])); t.appendChild(tr);
    });
    p.appendChild(t);
    if (d.dashboard) {
      var a = el('a', 'feature dashboard'); a.href = d.dashboard; a.target = '_blank'; a.rel = 'noopener';
      p.appendChild(el('p')).appendChild(a);
    }
    var pin = el('button', S.pinned[n.id] ? 'unpin' : 'pin');
    pin.id = 'pin'; pin.type = 'button';
    pin.addEventListener('click', function () {
      if (S.pinned[n.id]) { delete S.pinned[n.id]; } else { S.pinned[n.id] = true; }
      pin.textContent = S.pinned[n.id] ? 'unpin' : 'pin';
      updatePins(); draw();
    });
    p.appendChild(pin);
    p.appendChild(edgeTable('incoming (' + d.n_incoming + ')', d.incoming, 'source'));
    p.appendChild(edgeTable('outgoing (' + d.n_outgoing + ')', d.outgoing, 'target'));
  }

  function updatePins() {
    var n = Object.keys(S.pinned).length;
    $('pins').textContent = n + ' pinned';
    $('save').disabled = n === 0 || !!S.offline;
  }

  function save() {
    var ids = Object.keys(S.pinned);
    if (!ids.length) { return; }
    status('saving…');
    api('/api/save?' + q({ path: S.path }), { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                             body: JSON.stringify({ nodes: ids, name: 'pinned' }) })
      .then(function (d) {
        status('saved ' + d.n_nodes + ' nodes to ' + Object.keys(d.files).map(function (k) { return d.files[k]; }).join(', ')
               + (d.note ? ' (' + d.note + ')' : ''));
        document.body.dataset.saved = String(d.n_nodes);
      }).catch(function (e) { status(e.message, true); });
  }

  document.addEventListener('DOMContentLoaded', init);
}());
