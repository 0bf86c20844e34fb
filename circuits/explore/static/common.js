/* circuits explorer: helpers shared by the feature browser and the steering playground.
 * (The graph view, app.js, keeps its own copies: the offline export inlines it alone.)
 * 1. $(id), el(tag, text, cls): DOM lookup and creation; text always via textContent.
 * 2. status(text, isError): the page's status line; errors also land in body[data-error]
 *    (the browser tests read it).
 * 3. api(url, body): GET (or POST JSON when body is given) to the local server; a non-2xx
 *    answer rejects with the server's one-line JSON error. */
(function () {
  'use strict';
  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function status(text, isError) {
    var s = $('status');
    s.textContent = text || '';
    s.className = isError ? 'error' : '';
    if (isError) { document.body.dataset.error = text; } else { delete document.body.dataset.error; }
  }
  function api(url, body) {
    var opts = body === undefined ? {} : { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                           body: JSON.stringify(body) };
    return fetch(url, opts).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok) { throw new Error(j.error || ('HTTP ' + r.status)); }
        return j;
      });
    });
  }
  window.CX = { $: $, el: el, status: status, api: api };
}());
