// vendledger dashboard: live updates over Server-Sent Events.
//
// Pages that show live figures have <body data-live="1"> and mark the
// parts to refresh with data-fragment="NAME". Each committed log entry
// arrives as an SSE "entry" event (its id is the gseq, so the browser
// resumes after a reconnect with Last-Event-ID). The page lists the newest
// entries in #live-feed at once, then re-fetches itself (debounced) and
// swaps the marked fragments, retrying briefly until the page's data has
// caught up with the newest entry it heard of.
(function () {
  "use strict";
  if (!document.body || document.body.dataset.live !== "1" || !window.EventSource) {
    return;
  }
  var FEED_MAX = 12;
  var newest = 0;
  var timer = null;
  var attempts = 0;

  function status(text, ok) {
    var el = document.getElementById("live-status");
    if (el) {
      el.textContent = text;
      el.className = ok ? "live ok" : "live down";
    }
  }

  function describe(entry) {
    var kind = entry.kind || {};
    if (kind.type === "event") {
      return kind.machine + " #" + kind.seq + " " + kind.event.replace(/_/g, " ") +
        (kind.detail ? " — " + kind.detail : "");
    }
    if (kind.type === "operator") {
      return (kind.machine ? kind.machine + " " : "") + kind.action.replace(/_/g, " ") +
        " by " + kind.operator;
    }
    if (kind.type === "epoch_started") {
      return "epoch " + entry.epoch + " started by " + kind.primary;
    }
    return kind.type ? kind.type.replace(/_/g, " ") : "entry";
  }

  function addToFeed(entry) {
    var feed = document.getElementById("live-feed");
    if (!feed) {
      return;
    }
    var machine = feed.dataset.machine;
    if (machine && !(entry.kind && entry.kind.machine === machine)) {
      return;
    }
    var item = document.createElement("li");
    var gseq = document.createElement("span");
    gseq.className = "gseq";
    gseq.textContent = entry.gseq;
    item.appendChild(gseq);
    item.appendChild(document.createTextNode(" " + describe(entry)));
    feed.insertBefore(item, feed.firstChild);
    while (feed.children.length > FEED_MAX) {
      feed.removeChild(feed.lastChild);
    }
    var empty = document.getElementById("live-empty");
    if (empty) {
      empty.remove();
    }
  }

  function refresh() {
    timer = null;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-fragment]").forEach(function (old) {
          var name = old.getAttribute("data-fragment");
          var replacement = fresh.querySelector('[data-fragment="' + name + '"]');
          if (replacement) {
            old.replaceWith(document.importNode(replacement, true));
          }
        });
        var asOf = fresh.body ? Number(fresh.body.dataset.asOf || 0) : 0;
        if (asOf < newest && attempts < 4) {
          attempts += 1;
          schedule(600);
        } else {
          attempts = 0;
        }
      })
      .catch(function () {
        schedule(2000);
      });
  }

  function schedule(delay) {
    if (timer === null) {
      timer = window.setTimeout(refresh, delay);
    }
  }

  var source = new EventSource("/api/v1/events");
  source.addEventListener("open", function () {
    status("live", true);
  });
  source.addEventListener("error", function () {
    status("reconnecting…", false);
  });
  source.addEventListener("entry", function (message) {
    var entry;
    try {
      entry = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    newest = Math.max(newest, entry.gseq || 0);
    addToFeed(entry);
    schedule(300);
  });
})();
