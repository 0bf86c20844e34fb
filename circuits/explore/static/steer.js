/* circuits explorer: steering playground (vanilla JS, no remote requests).
 * 1. /api/features/info names the model, its layers and the limits; the hash
 *    #feature=L3/120 (from a feature card) pre-fills one intervention.
 * 2. Each intervention row: feature, mode (ablate | scale | clamp), strength, positions.
 * 3. Generate POSTs {prompt, interventions, max_new_tokens} to /api/steer and shows the
 *    unmodified and the steered greedy continuations side by side; generated tokens
 *    that differ from the unmodified ones are marked, each with its logit.
 * Text from the server is always set with textContent (never parsed as HTML). */
(function () {
  'use strict';
  var S = { info: null, seq: 0 };

  var $ = CX.$, el = CX.el, status = CX.status, api = CX.api;  // common.js
  function fmt(x) { return Number(x).toPrecision(3); }

  function addRow(feature, mode, strength) {
    var row = el('div', null, 'iv');
    var f = el('input', null, 'feat'); f.placeholder = 'L0/3'; f.value = feature || '';
    var m = el('select', null, 'mode');
    ['clamp', 'scale', 'ablate'].forEach(function (k) { var o = el('option', k); o.value = k; m.appendChild(o); });
    m.value = mode || 'clamp';
    var s = el('input', null, 'strength'); s.type = 'number'; s.step = 'any'; s.value = strength === undefined ? '10' : String(strength);
    var p = el('input', null, 'pos'); p.value = 'all'; p.title = '"all" or comma-separated prompt positions';
    var x = el('button', '×'); x.type = 'button'; x.title = 'remove';
    x.addEventListener('click', function () { row.remove(); });
    [el('span', 'feature'), f, m, el('span', 'strength'), s, el('span', 'positions'), p, x].forEach(function (c) { row.appendChild(c); });
    $('ivs').appendChild(row);
    return row;
  }
  function readRows() {
    return Array.prototype.map.call(document.querySelectorAll('#ivs .iv'), function (row) {
      var pos = row.querySelector('.pos').value.trim();
      var iv = { feature: row.querySelector('.feat').value.trim(), mode: row.querySelector('.mode').value };
      if (iv.mode !== 'ablate') { iv.strength = Number(row.querySelector('.strength').value); }
      if (pos && pos !== 'all') {
        iv.positions = pos.split(',').map(function (t) { return /^\s*\d+\s*$/.test(t) ? Number(t) : t.trim(); });
      }
      return iv;
    });
  }
  function drawSide(id, prompt, side, other) {
    var box = $(id);
    box.textContent = '';
    box.appendChild(el('span', prompt.join(''), 'prompt'));
    var steps = $(id + '-steps');
    steps.textContent = '';
    side.steps.forEach(function (st, j) {
      var differs = other && (!other.steps[j] || other.steps[j].id !== st.id);
      var s = el('span', st.token, differs ? 'new diff' : 'new');
      s.title = 'logit ' + fmt(st.logit) + '; top: ' + st.top.map(function (t) { return JSON.stringify(t[1]) + ' ' + fmt(t[2]); }).join(', ');
      box.appendChild(s);
      steps.appendChild(el('div', (j + 1) + '. ' + JSON.stringify(st.token) + ' logit ' + fmt(st.logit)));
    });
    box.dataset.text = side.text;
  }
  function go(ev) {
    if (ev) { ev.preventDefault(); }
    var seq = ++S.seq;
    var body = { prompt: $('prompt').value, interventions: readRows(), max_new_tokens: Number($('n').value) };
    status('generating…');
    document.body.dataset.steered = 'running';
    return api('/api/steer', body).then(function (d) {
      if (seq !== S.seq) { return; }
      drawSide('clean', d.prompt_tokens, d.clean, null);
      drawSide('steered', d.prompt_tokens, d.steered, d.clean);
      document.body.dataset.steered = '1';
      status('');
    }).catch(function (e) { document.body.dataset.steered = 'error'; status(e.message, true); });
  }
  function init() {
    $('add-iv').addEventListener('click', function () { addRow(); });
    $('steer-form').addEventListener('submit', go);
    var m = /(?:^#|&)feature=([^&]+)/.exec(location.hash);
    addRow(m ? decodeURIComponent(m[1]) : '');
    status('loading the model and dictionaries…');
    api('/api/features/info').then(function (info) {
      S.info = info;
      $('model').textContent = 'model ' + info.model + ' · layers ' + info.layers.map(function (l) { return l.layer; }).join(', ');
      $('n').max = String(info.limits.new_tokens);
      $('prompt').maxLength = info.limits.text_chars;
      if (!m && info.layers.length) { document.querySelector('#ivs .feat').placeholder = 'L' + info.layers[0].layer + '/0'; }
      document.body.dataset.state = 'ready';
      status('');
    }).catch(function (e) { status(e.message, true); document.body.dataset.state = 'error'; });
  }
  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', init); } else { init(); }
}());
