// Reloads the page every `data-refresh` seconds, unless the user is busy
// with a form; asks before destructive actions (`data-confirm`).
(function () {
  "use strict";
  var every = parseInt(document.body.getAttribute("data-refresh"), 10);
  if (every > 0) {
    setInterval(function () {
      var active = document.activeElement;
      if (active && active.form && active.form.classList.contains("filter")) {
        return;
      }
      var url = new URL(window.location.href);
      url.searchParams.delete("done");
      window.location.replace(url.toString());
    }, every * 1000);
  }
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();
