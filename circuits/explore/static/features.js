/* circuits explorer: feature browser (vanilla JS, no remote requests).
 * 1. /api/features/info names the model and its dictionary layers; the hash
 *    #layer=L&feature=I (or #id=L3/120) opens that feature's card and chooses it.
 * 2. Search (/api/features/search) by id, label or top token; results are paged.
 * 3. A result click opens its card (/api/features/feature): label, statistics, logit
 *    effects and, when the run has one, its dashboard in a sandboxed frame.
 * 4. Chosen features (at most the server's limit) and a text are POSTed to
 *    /api/features/activations; one heatmap row per feature, one cell per token
 *    (each row scaled by its own max |activation|).
 * Text from the server is always set with textContent (never parsed as HTML). */
(function () {
  'use strict';
  var S = { info: null, query: '', offset: 0, limit: 20, total: 0, chosen: [], sseq: 0, hseq: 0 };

  var $ = CX.$, el = CX.el, status = CX.status, api = CX.api;  // common.js
  function fmt(x) { return x === null || x === undefined ? 'n/a' : Number(x).toPrecision(3); }
  function heat(v, scale) {
    var a = scale > 0 ? Math.min(1, Math.abs(v) / scale) : 0;
    return v >= 0 ? 'rgba(230, 85, 13, ' + a.toFixed(3) + ')' : 'rgba(49, 130, 189, ' + a.toFixed(3) + ')';
  }

  // ------------------------------------------------------------ search
  function search(offset) {
    var seq = ++S.sseq;
    S.offset = offset || 0;
    status('searching…');
    var url = '/api/features/search?q=' + encodeURIComponent(S.query) + '&limit=' + S.limit + '&offset=' + S.offset;
    return api(url).then(function (d) {
      if (seq !== S.sseq) { return; }
      S.total = d.total;
      var ol = $('results');
      ol.textContent = '';
      d.items.forEach(function (it) {
        var li = el('li');
        li.dataset.id = it.id;
        var add = el('button', '+ compare', 'add');
        add.type = 'button';
        add.addEventListener('click', function (ev) { ev.stopPropagation(); choose(it.id); });
        li.appendChild(add);
        li.appendChild(el('span', it.id, 'fid'));
        if (it.label) { li.appendChild(el('span', ' ' + it.label)); }
        li.appendChild(el('div', 'top: ' + it.top_tokens.map(JSON.stringify).join(' '), 'toks'));
        li.addEventListener('click', function () { openCard(it.id); });
        ol.appendChild(li);
      });
      var shown = d.items.length ? (d.offset + 1) + '–' + (d.offset + d.items.length) : '0';
      $('results-count').textContent = shown + ' of ' + d.total + (S.query ? ' matching ' + JSON.stringify(S.query) : ' features');
      $('prev').disabled = d.offset === 0;
      $('next').disabled = d.offset + d.items.length >= d.total;
      document.body.dataset.results = String(d.items.length);
      document.body.dataset.searched = S.query;
      status('');
    }).catch(function (e) { status(e.message, true); });
  }

  // ------------------------------------------------------------ card
  function effectsTable(title, rows) {
    var t = el('table');
    var h = el('tr'); h.appendChild(el('th', title)); h.appendChild(el('th', 'effect')); t.appendChild(h);
    rows.forEach(function (r) {
      var tr = el('tr'); tr.appendChild(el('td', JSON.stringify(r[0]))); tr.appendChild(el('td', fmt(r[1]), 'w'));
      t.appendChild(tr);
    });
    return t;
  }
  function openCard(id) {
    status('loading ' + id + '…');
    return api('/api/features/feature?id=' + encodeURIComponent(id)).then(function (c) {
      var card = $('card');
      card.textContent = '';
      card.appendChild(el('h2', c.id + (c.label ? ' — ' + c.label : '')));
      card.appendChild(el('div', 'site ' + c.site + ' · dictionary width ' + c.width, 'hint'));
      var keys = Object.keys(c.stats);
      if (keys.length) {
        card.appendChild(el('div', keys.map(function (k) { return k.replace('_', ' ') + ' ' + fmt(c.stats[k]); }).join(' · ')));
      }
      var act = el('div');
      var b = el('button', '+ compare'); b.type = 'button'; b.id = 'card-add';
      b.addEventListener('click', function () { choose(c.id); });
      act.appendChild(b);
      var st = el('a', ' steer with this feature'); st.href = '/static/steer.html#feature=' + encodeURIComponent(c.id);
      act.appendChild(st);
      card.appendChild(act);
      card.appendChild(el('h3', 'Direct logit effects'));
      var eff = el('div', null, 'effects');
      eff.appendChild(effectsTable('promoted', c.logit_effects.promoted));
      eff.appendChild(effectsTable('suppressed', c.logit_effects.suppressed));
      card.appendChild(eff);
      if (c.dashboard) {
        card.appendChild(el('h3', 'Dashboard (top examples, histogram)'));
        var f = document.createElement('iframe');
        f.setAttribute('sandbox', 'allow-scripts');
        f.src = c.dashboard;
        f.title = 'dashboard of ' + c.id;
        card.appendChild(f);
      } else {
        card.appendChild(el('p', 'This run has no dashboard for this feature (circuits demo writes them for the circuit\'s features; circuits features for one dictionary).', 'hint'));
      }
      Array.prototype.forEach.call(document.querySelectorAll('#results li'), function (li) {
        li.classList.toggle('open', li.dataset.id === c.id);
      });
      document.body.dataset.card = c.id;
      status('');
    }).catch(function (e) { status(e.message, true); });
  }

  // ------------------------------------------------------------ chosen features + heatmap
  function drawChosen() {
    var box = $('chosen');
    box.textContent = '';
    if (!S.chosen.length) { box.appendChild(el('span', 'no feature chosen yet: use “+ compare”', 'hint')); }
    S.chosen.forEach(function (id) {
      var c = el('span', id, 'chip');
      c.dataset.id = id;
      var x = el('button', '×'); x.type = 'button'; x.title = 'remove ' + id;
      x.addEventListener('click', function () {
        S.chosen = S.chosen.filter(function (v) { return v !== id; });
        drawChosen();
      });
      c.appendChild(x);
      box.appendChild(c);
    });
    document.body.dataset.chosen = String(S.chosen.length);
  }
  function choose(id) {
    var max = S.info ? S.info.limits.features : 16;
    if (S.chosen.indexOf(id) < 0) {
      if (S.chosen.length >= max) { status('at most ' + max + ' features at once', true); return; }
      S.chosen.push(id);
    }
    drawChosen();
  }
  function runHeatmap() {
    if (!S.chosen.length) { status('choose at least one feature (“+ compare”)', true); return Promise.resolve(); }
    var seq = ++S.hseq;
    status('running the model…');
    document.body.dataset.heatmap = 'running';
    return api('/api/features/activations', { text: $('text').value, features: S.chosen }).then(function (d) {
      if (seq !== S.hseq) { return; }
      var t = el('table', null, 'heat');
      d.features.forEach(function (f) {
        var tr = el('tr');
        tr.dataset.id = f.id;
        tr.appendChild(el('th', f.id));
        var td = el('td');
        var row = el('div', null, 'tokrow');
        var scale = Math.max(Math.abs(f.max), Math.abs(f.min));
        d.tokens.forEach(function (tok, i) {
          var v = f.activations[i];
          var s = el('span', tok, 'tok-cell');
          s.style.background = heat(v, scale);
          s.title = JSON.stringify(tok) + ' (position ' + i + '): ' + fmt(v);
          s.dataset.value = String(v);
          row.appendChild(s);
        });
        td.appendChild(row);
        tr.appendChild(td);
        tr.appendChild(el('td', 'max ' + fmt(f.max), 'max'));
        t.appendChild(tr);
      });
      var hm = $('heatmap');
      hm.textContent = '';
      hm.appendChild(t);
      document.body.dataset.tokens = String(d.tokens.length);
      document.body.dataset.heatmap = 'ready';
      status('');
    }).catch(function (e) { document.body.dataset.heatmap = 'error'; status(e.message, true); });
  }

  // ------------------------------------------------------------ start
  function fromHash() {
    var h = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
      var i = kv.indexOf('=');
      if (i > 0) { h[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1)); }
    });
    if (h.id) { return h.id; }
    if (/^\d+$/.test(h.layer || '') && /^\d+$/.test(h.feature || '')) { return 'L' + h.layer + '/' + h.feature; }
    return null;
  }
  function init() {
    $('search-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      S.query = $('q').value;
      search(0);
    });
    $('prev').addEventListener('click', function () { search(Math.max(0, S.offset - S.limit)); });
    $('next').addEventListener('click', function () { search(S.offset + S.limit); });
    $('run').addEventListener('click', runHeatmap);
    drawChosen();
    status('loading the model and dictionaries…');
    api('/api/features/info').then(function (info) {
      S.info = info;
      $('model').textContent = 'model ' + info.model + ' · ' + info.features + ' features on layers ' +
        info.layers.map(function (l) { return l.layer; }).join(', ');
      $('text').maxLength = info.limits.text_chars;
      var want = fromHash();
      var jobs = [search(0)];
      if (want) { choose(want); jobs.push(openCard(want)); }
      return Promise.all(jobs);
    }).then(function () {
      document.body.dataset.state = 'ready';
    }).catch(function (e) {
      status(e.message, true);
      document.body.dataset.state = 'error';
    });
    window.addEventListener('hashchange', function () {
      var want = fromHash();
      if (want) { choose(want); openCard(want); }
    });
  }
  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', init); } else { init(); }
}());
