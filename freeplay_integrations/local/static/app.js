(function () {
  "use strict";
  var url = document.body.getAttribute("data-fragment");
  var target = document.getElementById("content");
  var live = document.getElementById("live");
  if (!url || !target) { return; }
  var busy = false;

  function detailsState() {
    var state = {};
    target.querySelectorAll("details[data-key]").forEach(function (d) {
      state[d.getAttribute("data-key")] = d.open;
    });
    return state;
  }

  function restore(state) {
    target.querySelectorAll("details[data-key]").forEach(function (d) {
      var key = d.getAttribute("data-key");
      if (Object.prototype.hasOwnProperty.call(state, key)) { d.open = state[key]; }
    });
  }

  function setLive(ok) {
    if (!live) { return; }
    live.className = ok ? "live" : "live down";
    live.textContent = ok ? "live" : "server unreachable";
  }

  function poll() {
    if (busy || document.hidden) { return; }
    busy = true;
    var headers = { "If-None-Match": target.getAttribute("data-etag") || "" };
    fetch(url, { headers: headers, cache: "no-store" }).then(function (response) {
      setLive(true);
      if (response.status === 304) { return null; }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      var etag = response.headers.get("ETag") || "";
      return response.text().then(function (text) { return [etag, text]; });
    }).then(function (result) {
      if (result === null) { return; }
      var state = detailsState();
      target.innerHTML = result[1];
      target.setAttribute("data-etag", result[0]);
      restore(state);
      document.dispatchEvent(new CustomEvent("freeplay:updated"));
    }).catch(function () {
      setLive(false);
    }).then(function () {
      busy = false;
    });
  }

  setInterval(poll, 1000);
  document.addEventListener("visibilitychange", poll);
})();
