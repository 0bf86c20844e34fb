/* circuits explorer front end (vanilla JS, no remote requests).
 * 1. List the run's graphs (/api/graphs: feature-level graphs and component circuits,
 *    saved subgraphs included), load one's summary (/api/graph).
 * 2. Fetch one page of the pruned view for the slider thresholds, page size and offset
 *    (/api/pruned), draw it as SVG: tokens are columns, layers rows (inputs bottom,
 *    logits top); a component circuit uses its own rows (embed, per layer attention and
 *    MLP, logits) and columns (heads, MLP). Show totals and the page.
 * 3. Node click -> /api/node -> side panel; pin nodes; group pinned nodes into labelled
 *    supernodes; POST the pinned ids and supernodes to /api/save; open the saved graph.
 * An offline export embeds {summary, view, details} in #explore-data instead of the API.
 * Text from the graph is always set with textContent (never parsed as HTML). */
(function () {
  'use strict';
  var SVGNS = 'http://www.w3.org/2000/svg';
  var S = { path: null, summary: null, view: null, pinned: {}, supernodes: [], selected: null, offline: null,
            timer: null, seq: 0, offset: 0, entries: {} };
  var COLORS = { feature: '#f4c27a', error: '#c7c7c7', token: '#9ecae1', logit: '#a1d99b',
                 head: '#f4c27a', mlp: '#c6a5e0', embed: '#9ecae1', logits: '#a1d99b' };

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
  function pageSize() { return parseInt($('page-size').value, 10) || 500; }
  function isComponent() { return !!(S.summary && S.summary.level === 'component'); }

  // ------------------------------------------------------------ loading
  function init() {
    var data = $('explore-data');
    $('nt').addEventListener('input', onSlider);
    $('et').addEventListener('input', onSlider);
    $('save').addEventListener('click', save);
    $('group').addEventListener('click', group);
    $('prev').addEventListener('click', function () { page(-1); });
    $('next').addEventListener('click', function () { page(1); });
    $('page-size').addEventListener('change', function () { S.offset = 0; refresh(); });
    if (data) {
      S.offline = JSON.parse(data.textContent);
      S.summary = S.offline.summary;
      S.path = S.summary.path;
      $('graph-label').textContent = 'graph ' + S.path + ' (offline export)';
      if ($('nav')) { $('nav').hidden = true; }
      $('nt').value = S.offline.view.node_threshold; $('et').value = S.offline.view.edge_threshold;
      ['nt', 'et', 'prev', 'next', 'page-size', 'group', 'sn-label', 'save-name'].forEach(function (id) {
        $(id).disabled = true;
      });
      $('save').hidden = true;
      showThresholds();
      setView(S.offline.view);
      return;
    }
    api('/api/graphs').then(function (d) {
      fillGraphs(d.entries || d.graphs.map(function (p) { return { path: p, level: 'feature' }; }));
      $('graph').addEventListener('change', function () { load($('graph').value); });
      if (!d.graphs.length) { status('no graphs found in this run directory', true); return; }
      var want = decodeURIComponent((location.hash.match(/graph=([^&]*)/) || [])[1] || '');
      var first = d.graphs.indexOf(want) >= 0 ? want : (d.graphs.indexOf('graph') >= 0 ? 'graph' : d.graphs[0]);
      $('graph').value = first;
      load(first);
    }).catch(function (e) { status(e.message, true); });
  }

  function fillGraphs(entries) {
    var sel = $('graph');
    while (sel.firstChild) { sel.removeChild(sel.firstChild); }
    entries.forEach(function (g) {
      S.entries[g.path] = g;
      var o = el('option', g.path + (g.level === 'component' ? ' (component circuit)' : '')
                            + (g.command ? ' [' + g.command + ']' : ''));
      o.value = g.path;
      sel.appendChild(o);
    });
  }

  function load(path) {
    S.path = path; S.pinned = {}; S.supernodes = []; S.selected = null; S.offset = 0;
    status('loading ' + path + '…');
    document.body.dataset.state = 'loading';
    api('/api/graph?' + q({ path: path })).then(function (s) {
      S.summary = s;
      document.body.dataset.level = s.level || 'feature';
      document.body.dataset.path = path;
      var apply = s.thresholds_apply !== false;
      $('nt').disabled = !apply; $('et').disabled = !apply;
      $('thresholds-note').hidden = apply;
      // A saved subgraph comes back with its pins and supernodes.
      (s.supernodes || []).forEach(function (sn) {
        S.supernodes.push(sn.slice());
        sn.slice(1).forEach(function (id) { S.pinned[id] = true; });
      });
      var md = s.metadata && s.metadata.explore;
      if (md && Array.isArray(md.pinned)) { md.pinned.forEach(function (id) { S.pinned[id] = true; }); }
      updatePins();
      refresh();
    }).catch(function (e) { status(e.message, true); });
  }

  function showThresholds() {
    $('nt-val').textContent = Number($('nt').value).toFixed(2);
    $('et-val').textContent = Number($('et').value).toFixed(2);
  }

  function onSlider() {
    showThresholds();
    S.offset = 0;
    clearTimeout(S.timer);
    S.timer = setTimeout(refresh, 150);  // pruning runs on the server: wait for the slider to rest
  }

  function page(dir) {
    if (!S.view || S.offline) { return; }
    var next = dir > 0 ? S.view.next_offset : S.view.prev_offset;
    if (next === null || next === undefined) { return; }
    S.offset = next;
    refresh();
  }

  function refresh() {
    if (S.offline || !S.path) { return; }
    var seq = ++S.seq;
    document.body.dataset.state = 'loading';
    status(isComponent() ? 'loading…' : 'pruning…');
    var params = { path: S.path, limit: pageSize(), offset: S.offset };
    if (!isComponent()) { params.node_threshold = $('nt').value; params.edge_threshold = $('et').value; }
    api('/api/pruned?' + q(params)).then(function (v) {
      if (seq === S.seq) { setView(v); }  // ignore answers to older slider positions
    }).catch(function (e) { status(e.message, true); });
  }

  function setView(v) {
    S.view = v;
    var n = v.nodes.length, first = n ? v.offset + 1 : 0, last = v.offset + n;
    var pages = Math.max(1, Math.ceil(v.total_nodes / v.limit));
    $('count').textContent = v.total_nodes + ' nodes, ' + v.total_edges + ' edges';
    $('page-info').textContent = 'page ' + (Math.floor(v.offset / v.limit) + 1) + ' of ' + pages + ' (nodes '
      + first + '–' + last + ' by influence; ' + v.edges.length + ' edges drawn'
      + (v.edges_truncated ? ' of ' + v.page_edges : '') + ')';
    $('prev').disabled = !!S.offline || v.prev_offset === null || v.prev_offset === undefined;
    $('next').disabled = !!S.offline || v.next_offset === null || v.next_offset === undefined;
    draw();
    status('');
    document.body.dataset.nodes = String(v.total_nodes);
    document.body.dataset.edges = String(v.total_edges);
    document.body.dataset.offset = String(v.offset);
    document.body.dataset.shown = String(n);
    // For tests and the scale benchmark: how many views were drawn, and when the last one was ready.
    document.body.dataset.views = String((parseInt(document.body.dataset.views || '0', 10) || 0) + 1);
    document.body.dataset.readyAt = String(performance.now());
    document.body.dataset.state = 'ready';
  }

  // ------------------------------------------------------------ drawing
  function rowOf(n) { return n.row !== undefined && n.row !== null ? n.row : n.layer + 1; }

  function draw() {
    var svg = $('plot'), v = S.view, s = S.summary;
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var toks = s.tokens, nL = s.n_layers;
    var labels = s.row_labels || (function () {
      var out = ['tokens'];
      for (var l = 0; l < nL; l++) { out.push('L' + l); }
      out.push('logits');
      return out;
    }());
    var nRows = labels.length;
    var CW = 96, RH = 70, X0 = 70, Y0 = 20;
    var W = X0 + CW * Math.max(toks.length, 1) + 20, H = Y0 + RH * nRows + 40;
    svg.setAttribute('width', W); svg.setAttribute('height', H);
    function rowY(r) { return Y0 + RH * (nRows - 1 - r) + RH / 2; }  // row 0 (inputs) at the bottom
    var cells = {}, pos = {};
    v.nodes.forEach(function (n) {
      var c = rowOf(n) + ':' + n.pos;
      (cells[c] = cells[c] || []).push(n);
    });
    Object.keys(cells).forEach(function (c) {
      var list = cells[c];
      list.forEach(function (n, j) {
        pos[n.id] = { x: X0 + CW * n.pos + CW * (j + 1) / (list.length + 1), y: rowY(rowOf(n)) };
      });
    });
    labels.forEach(function (lab, r) {
      var t = sv('text', { x: 4, y: rowY(r) + 4, 'class': 'layer' });
      t.textContent = lab;
      svg.appendChild(t);
    });
    toks.forEach(function (tok, p) {
      var t = sv('text', { x: X0 + CW * p + CW / 2, y: H - 12, 'text-anchor': 'middle', 'class': 'tok' });
      t.textContent = JSON.stringify(tok).slice(1, -1).slice(0, 14);
      svg.appendChild(t);
    });
    drawSupernodes(svg, pos);
    var maxw = 0;
    v.edges.forEach(function (e) { maxw = Math.max(maxw, Math.abs(e.weight || 0)); });
    var g = sv('g', { 'class': 'edges' });
    v.edges.forEach(function (e) {
      var a = pos[e.source], b = pos[e.target];
      if (!a || !b) { return; }
      var w = maxw > 0 ? Math.abs(e.weight || 0) / maxw : 0.5;
      var line = sv('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: (e.weight || 0) >= 0 ? '#2c7fb8' : '#d7301f',
                              'stroke-width': (0.6 + 3.5 * w).toFixed(2), 'stroke-opacity': (0.2 + 0.6 * w).toFixed(2),
                              'class': 'edge' });
      var title = sv('title', {});  // hover: the edge's weight
      title.textContent = e.source + ' → ' + e.target + ': ' + (e.weight === null ? 'unscored' : fmt(e.weight))
        + (e.port ? ' (' + e.port + ')' : '');
      line.appendChild(title);
      g.appendChild(line);
    });
    svg.appendChild(g);
    v.nodes.forEach(function (n) {
      var p = pos[n.id];
      var cls = 'node' + (S.pinned[n.id] ? ' pinned' : '') + (S.selected === n.id ? ' selected' : '');
      var c = sv('circle', { cx: p.x, cy: p.y, r: n.type === 'feature' || n.type === 'head' ? 6 : 8,
                             fill: COLORS[n.type] || '#ccc', 'class': cls, 'data-id': n.id });
      var title = sv('title', {});
      title.textContent = n.id + (n.label && n.label !== n.id ? ' — ' + n.label : '') + ' (influence ' + fmt(n.influence) + ')';
      c.appendChild(title);
      c.addEventListener('click', function () { select(n.id); });
      svg.appendChild(c);
      if (isComponent()) {
        var t = sv('text', { x: p.x, y: p.y - 10, 'text-anchor': 'middle', 'class': 'nlabel' });
        t.textContent = n.id;
        svg.appendChild(t);
      }
    });
  }

  function drawSupernodes(svg, pos) {
    // Each member gets a dashed halo, the members are joined by a dashed path and the
    // label sits above the top member (a bounding box would seem to enclose non-members).
    S.supernodes.forEach(function (sn) {
      var pts = sn.slice(1).map(function (id) { return pos[id]; }).filter(function (p) { return p; });
      if (!pts.length) { return; }
      var g = sv('g', { 'class': 'supernode', 'data-label': sn[0] });
      if (pts.length > 1) {
        g.appendChild(sv('polyline', { points: pts.map(function (p) { return p.x + ',' + p.y; }).join(' ') }));
      }
      pts.forEach(function (p) { g.appendChild(sv('circle', { cx: p.x, cy: p.y, r: 13 })); });
      var top = pts.reduce(function (a, b) { return b.y < a.y ? b : a; });
      var t = sv('text', { x: top.x, y: top.y - 17, 'text-anchor': 'middle' });
      t.textContent = sn[0];
      g.appendChild(t);
      svg.appendChild(g);
    });
  }

  // ------------------------------------------------------------ panel
  function mark() {  // pin/selection classes only: no redraw of the whole view
    Array.prototype.forEach.call(document.querySelectorAll('#plot circle.node'), function (c) {
      var id = c.getAttribute('data-id');
      c.setAttribute('class', 'node' + (S.pinned[id] ? ' pinned' : '') + (S.selected === id ? ' selected' : ''));
    });
  }

  function select(id) {
    S.selected = id;
    mark();
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
      td.appendChild(a); tr.appendChild(td);
      tr.appendChild(el('td', r.weight === null ? 'unscored' : fmt(r.weight), 'w'));
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
    var rows = d.level === 'component'
      ? [['type', n.type], ['layer', n.layer < 0 ? 'embed' : n.layer], ['score', fmt(n.score)],
         ['rank weight', fmt(n.influence)]]
      : [['type', n.type], ['layer', n.layer], ['position', n.pos], ['token', JSON.stringify(n.token)],
         ['activation', fmt(n.activation)], ['label', n.label || '—']];
    rows.forEach(function (r) {
      var tr = el('tr'); tr.appendChild(el('th', r[0])); tr.appendChild(el('td', r[1])); t.appendChild(tr);
    });
    p.appendChild(t);
    if (d.dashboard) {
      var a = el('a', 'feature dashboard'); a.href = d.dashboard; a.target = '_blank'; a.rel = 'noopener';
      p.appendChild(el('p')).appendChild(a);
    }
    if (n.type === 'feature' && !S.offline) {
      var fb = el('a', 'open in feature browser');
      fb.id = 'open-feature';
      // Relative (the page is served at the root): the feature browser reads the hash.
      fb.href = 'static/features.html#layer=' + n.layer + '&feature=' + n.feature;
      p.appendChild(el('p')).appendChild(fb);
    }
    var pin = el('button', S.pinned[n.id] ? 'unpin' : 'pin');
    pin.id = 'pin'; pin.type = 'button';
    pin.addEventListener('click', function () {
      if (S.pinned[n.id]) { delete S.pinned[n.id]; dropMember(n.id); } else { S.pinned[n.id] = true; }
      pin.textContent = S.pinned[n.id] ? 'unpin' : 'pin';
      updatePins(); if (S.supernodes.length) { draw(); } else { mark(); }
    });
    p.appendChild(pin);
    p.appendChild(edgeTable('incoming (' + d.n_incoming + ')', d.incoming, 'source'));
    p.appendChild(edgeTable('outgoing (' + d.n_outgoing + ')', d.outgoing, 'target'));
  }

  // ------------------------------------------------------------ pins and supernodes
  function grouped() {
    var out = {};
    S.supernodes.forEach(function (sn) { sn.slice(1).forEach(function (id) { out[id] = sn[0]; }); });
    return out;
  }

  function dropMember(id) {
    S.supernodes = S.supernodes.map(function (sn) {
      return sn.filter(function (x, i) { return i === 0 || x !== id; });
    }).filter(function (sn) { return sn.length > 1; });
  }

  function group() {
    var taken = grouped();
    var ids = Object.keys(S.pinned).filter(function (id) { return !taken[id]; });
    if (!ids.length) { status('pin nodes that are in no supernode yet, then group them', true); return; }
    var label = ($('sn-label').value || '').trim() || ('supernode ' + (S.supernodes.length + 1));
    if (S.supernodes.some(function (sn) { return sn[0] === label; })) {
      status('a supernode is already called ' + JSON.stringify(label), true); return;
    }
    S.supernodes.push([label].concat(ids));
    $('sn-label').value = '';
    status('');
    updatePins(); draw();
  }

  function updatePins() {
    var n = Object.keys(S.pinned).length;
    $('pins').textContent = n + ' pinned';
    $('save').disabled = n === 0 || !!S.offline;
    var list = $('supernodes');
    while (list.firstChild) { list.removeChild(list.firstChild); }
    S.supernodes.forEach(function (sn, i) {
      var li = el('li', sn[0] + ' (' + (sn.length - 1) + ')');
      li.dataset.label = sn[0];
      var x = el('button', '×', 'ungroup');
      x.type = 'button'; x.title = 'ungroup';
      x.addEventListener('click', function () { S.supernodes.splice(i, 1); updatePins(); draw(); });
      li.appendChild(x);
      list.appendChild(li);
    });
  }

  function save() {
    var ids = Object.keys(S.pinned);
    if (!ids.length) { return; }
    var name = ($('save-name').value || '').trim() || 'pinned';
    status('saving…');
    api('/api/save?' + q({ path: S.path }), { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                             body: JSON.stringify({ nodes: ids, name: name, supernodes: S.supernodes }) })
      .then(function (d) {
        status('saved ' + d.n_nodes + ' nodes' + (d.note ? ' (' + d.note + ')' : ''));
        var box = $('saved');
        while (box.firstChild) { box.removeChild(box.firstChild); }
        Object.keys(d.files).forEach(function (k) {
          var a = el('a', k); a.href = d.files[k]; a.target = '_blank'; a.rel = 'noopener'; a.className = 'file';
          box.appendChild(a);
        });
        var open = el('button', 'open saved');
        open.id = 'open-saved'; open.type = 'button';
        open.addEventListener('click', function () {
          api('/api/graphs').then(function (g) {
            fillGraphs(g.entries);
            $('graph').value = d.path;
            load(d.path);
          }).catch(function (e) { status(e.message, true); });
        });
        box.appendChild(open);
        document.body.dataset.saved = String(d.n_nodes);
        document.body.dataset.savedPath = d.path;
      }).catch(function (e) { status(e.message, true); });
  }

  document.addEventListener('DOMContentLoaded', init);
}());
