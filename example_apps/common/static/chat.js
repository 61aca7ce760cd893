// The example chat page, shared by the FastAPI, Flask and Django apps.
// The conversation's session travels in an HttpOnly cookie the middleware sets: this
// script never handles it, it only shows the ID the server echoes in X-Freeplay-Session-Id.
(function () {
  "use strict";
  var SESSION_HEADER = "X-Freeplay-Session-Id";
  var list = document.getElementById("messages");
  var form = document.getElementById("composer");
  var input = document.getElementById("message");
  var send = document.getElementById("send");
  var newButton = document.getElementById("new-conversation");
  var sessionId = document.getElementById("session-id");
  var freeplayLink = document.getElementById("freeplay-link");

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text) { node.textContent = text; }
    return node;
  }

  function showSession(data, response) {
    var id = (response && response.headers.get(SESSION_HEADER)) || data.session_id;
    if (id) { sessionId.textContent = id; }
    if (data.freeplay_url) {
      freeplayLink.href = data.freeplay_url;
      freeplayLink.hidden = false;
    }
  }

  function addUser(text) {
    list.appendChild(element("li", "msg user", text));
  }

  function addAssistant() {
    var item = element("li", "msg assistant");
    item.setAttribute("data-state", "streaming");
    item.appendChild(element("div", "rewrite"));
    item.appendChild(element("div", "text"));
    list.appendChild(item);
    return item;
  }

  function showVote(item, choice) {
    item.querySelectorAll(".feedback button").forEach(function (b) {
      b.classList.toggle("chosen", b.getAttribute("data-vote") === choice);
    });
    item.setAttribute("data-feedback", choice);
  }

  function showRewrite(item, question) {
    item.querySelector(".rewrite").textContent = "rewritten: " + question;
  }

  // The answer's completion, or (model calls recorded as OpenTelemetry spans: no
  // completion ID) its turn's trace.
  function vote(item, answer, choice) {
    fetch("/api/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        completion_id: answer.completion_id || null,
        trace_id: answer.trace_id || null,
        vote: choice
      })
    }).then(function (response) {
      if (!response.ok) { throw new Error("feedback failed: " + response.status); }
      showVote(item, choice);
    }).catch(function (error) { console.error(error); });
  }

  function finish(item, answer) {
    item.setAttribute("data-state", "done");
    if (answer.completion_id) { item.setAttribute("data-completion-id", answer.completion_id); }
    if (answer.trace_id) { item.setAttribute("data-trace-id", answer.trace_id); }
    var box = element("div", "feedback");
    [["up", "✓ Good", "Thumbs up: a good answer"], ["down", "✗ Bad", "Thumbs down: a bad answer"]].forEach(function (spec) {
      var button = element("button", "", spec[1]);
      button.type = "button";
      button.title = spec[2];
      button.setAttribute("data-vote", spec[0]);
      button.addEventListener("click", function () { vote(item, answer, spec[0]); });
      box.appendChild(button);
    });
    item.appendChild(box);
  }

  function fail(item, message) {
    item.classList.add("error");
    item.setAttribute("data-state", "error");
    item.querySelector(".text").textContent = message;
  }

  function handle(item, name, data) {
    if (name === "rewrite") {
      showRewrite(item, data.question);
    } else if (name === "token") {
      item.querySelector(".text").textContent += data.text;
    } else if (name === "done") {
      finish(item, data);
    } else if (name === "error") {
      fail(item, data.message);
    }
  }

  // Reads a text/event-stream body: "event: NAME\ndata: JSON\n\n" blocks.
  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function pump() {
      return reader.read().then(function (chunk) {
        buffer += decoder.decode(chunk.value || new Uint8Array(), { stream: !chunk.done });
        var end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          var block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          var name = "message", data = "";
          block.split("\n").forEach(function (line) {
            if (line.indexOf("event: ") === 0) { name = line.slice(7); }
            if (line.indexOf("data: ") === 0) { data += line.slice(6); }
          });
          onEvent(name, data ? JSON.parse(data) : {});
        }
        if (!chunk.done) { return pump(); }
      });
    }
    return pump();
  }

  function busy(on) {
    input.disabled = on;
    send.disabled = on;
    newButton.disabled = on;
    document.body.setAttribute("data-busy", on ? "true" : "false");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text) { return; }
    input.value = "";
    addUser(text);
    var item = addAssistant();
    busy(true);
    fetch("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "text/event-stream" },
      body: JSON.stringify({ message: text })
    }).then(function (response) {
      showSession({}, response);
      if (!response.ok) {
        return response.json().then(function (body) { fail(item, body.error); });
      }
      return readEvents(response, function (name, data) { handle(item, name, data); });
    }).catch(function (error) {
      fail(item, "The request failed: " + error);
    }).then(function () {
      if (item.getAttribute("data-state") === "streaming") { fail(item, "The answer stopped."); }
      busy(false);
      input.focus();
    });
  });

  newButton.addEventListener("click", function () {
    busy(true);
    fetch("/api/new", { method: "POST" }).then(function (response) {
      return response.json().then(function (data) {
        list.textContent = "";
        showSession(data, response);
      });
    }).finally(function () { busy(false); input.focus(); });
  });

  fetch("/api/conversation").then(function (response) {
    return response.json().then(function (data) {
      showSession(data, response);
      document.getElementById("framework").textContent = data.framework || "";
      document.getElementById("responder").textContent =
        "Answers come from " + data.responder.provider + "/" + data.responder.model + ".";
      data.turns.forEach(function (turn) {
        addUser(turn.message);
        var item = addAssistant();
        if (turn.question) { showRewrite(item, turn.question); }
        item.querySelector(".text").textContent = turn.answer;
        finish(item, turn);
        if (turn.vote) { showVote(item, turn.vote); }
      });
      document.body.setAttribute("data-ready", "true");
    });
  });
})();
