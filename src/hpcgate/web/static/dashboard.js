// hpcgate dashboard: the little the pages need beyond htmx. No inline script anywhere
// (the Content-Security-Policy forbids it); every page also works without this file.
"use strict";

// A form with data-confirm (Kill) asks first; without JavaScript the server shows a
// confirmation page instead.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) return;
  if (!window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  const confirmed = document.createElement("input");
  confirmed.type = "hidden";
  confirmed.name = "confirmed";
  confirmed.value = "yes";
  form.appendChild(confirmed);
});

// The script editor: Tab indents. Esc, then Tab, leaves the editor (keyboard users are
// never trapped).
document.addEventListener("keydown", (event) => {
  const area = event.target;
  if (!(area instanceof HTMLTextAreaElement) || !("tabIndent" in area.dataset)) return;
  if (event.key === "Escape") {
    area.dataset.leaving = "1";
    return;
  }
  if (event.key !== "Tab" || event.shiftKey || event.ctrlKey || event.altKey || event.metaKey) {
    delete area.dataset.leaving;
    return;
  }
  if (area.dataset.leaving) {
    delete area.dataset.leaving;
    return;
  }
  event.preventDefault();
  const start = area.selectionStart;
  area.setRangeText("\t", start, area.selectionEnd, "end");
});

// A job's output, followed live from the API (GET /api/job/<m>/<id>/output as
// Server-Sent Events, one stream per file): each "output" event's text is appended as
// text, never as HTML; "eof" ends it. The browser resumes at the last byte offset by itself.
function followStream(box, pre, state) {
  const url = new URL(box.dataset.follow, window.location.href);
  url.searchParams.set("stream", pre.dataset.stream);
  url.searchParams.set("follow", "true");
  const source = new EventSource(url);
  source.addEventListener("output", (message) => {
    const chunk = JSON.parse(message.data);
    pre.append(document.createTextNode(chunk.data || ""));
    state.textContent = box.dataset.live;
  });
  source.addEventListener("eof", () => {
    source.close();
    pre.dataset.ended = "true";
    state.textContent = box.dataset.ended;
  });
  source.onopen = () => {
    state.textContent = box.dataset.live;
  };
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) state.textContent = box.dataset.lost;
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-follow]").forEach((box) => {
    const state = box.querySelector("[data-follow-state]");
    box.querySelectorAll("pre[data-stream]").forEach((pre) => followStream(box, pre, state));
  });
});

// The Files page's upload: the same form, sent by XMLHttpRequest so that a progress bar
// can follow it; then the listing is fetched again and swapped in place (as text parsed
// into a detached document: nothing in it runs). Without JavaScript the form posts and
// the server answers with the directory's page.
function replaceListing(url) {
  return fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" })
    .then((answer) => answer.text())
    .then((html) => {
      const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("file-listing");
      const current = document.getElementById("file-listing");
      if (fresh && current) current.replaceWith(document.adoptNode(fresh));
    });
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !("upload" in form.dataset)) return;
  event.preventDefault();
  const bar = form.querySelector("[data-upload-bar]");
  const progress = bar.querySelector("progress");
  const status = form.querySelector("[data-upload-status]");
  const button = form.querySelector("button[type=submit]");
  const input = form.querySelector("input[type=file]");
  const request = new XMLHttpRequest();
  request.open("POST", form.action);
  request.setRequestHeader("Accept", "application/json");
  request.responseType = "json";
  const show = (percent) => {
    progress.value = percent;
    status.textContent = form.dataset.progress.replace("{percent}", String(percent));
  };
  request.upload.addEventListener("progress", (progressEvent) => {
    if (progressEvent.lengthComputable) {
      show(Math.floor((100 * progressEvent.loaded) / progressEvent.total));
    }
  });
  const failed = (reason) => {
    status.textContent = `${form.dataset.failed} ${reason}`;
    button.disabled = false;
  };
  request.addEventListener("load", () => {
    const answer = request.response || {};
    if (request.status !== 200) {
      failed(answer.error || `${request.status} ${request.statusText}`);
      return;
    }
    show(100);
    status.textContent = form.dataset.done.replace("{name}", answer.name || "");
    button.disabled = false;
    input.value = "";
    replaceListing(form.dataset.listing);
  });
  request.addEventListener("error", () => failed(request.statusText || "network error"));
  bar.hidden = false;
  button.disabled = true;
  show(0);
  request.send(new FormData(form));
});
