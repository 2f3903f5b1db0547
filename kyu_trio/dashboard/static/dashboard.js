// kyu-trio dashboard: the only script. Every page works without it; it adds the live
// update of the overview and the "select all on this page" checkbox.
(function () {
  "use strict";

  var box = document.getElementById("queues");
  var status = document.getElementById("live-status");
  if (box && box.dataset.live) {
    var every = parseFloat(box.dataset.interval || "0") * 1000;
    var busy = false;
    var refresh = function () {
      if (busy || document.hidden) {
        return;
      }
      // Never swap the numbers under a pointer about to press a button.
      if (box.contains(document.activeElement) && document.activeElement.tagName === "BUTTON") {
        return;
      }
      busy = true;
      fetch(box.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("HTTP " + response.status);
          }
          return response.text();
        })
        .then(function (html) {
          box.innerHTML = html;
          box.classList.remove("stale");
          box.dataset.updated = new Date().toISOString();
          if (status) {
            status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
          }
        })
        .catch(function (error) {
          box.classList.add("stale");
          if (status) {
            status.textContent = "Live update failed (" + error.message + "); showing older numbers.";
          }
        })
        .finally(function () {
          busy = false;
        });
    };
    if (every > 0) {
      window.setInterval(refresh, every);
    }
  }

  var boxes = document.querySelectorAll("input.select-all");
  Array.prototype.forEach.call(boxes, function (all) {
    var form = all.closest("form");
    all.hidden = false;
    all.addEventListener("change", function () {
      var rows = form.querySelectorAll('input[type="checkbox"][name="job"]');
      Array.prototype.forEach.call(rows, function (row) {
        row.checked = all.checked;
      });
    });
  });
})();
