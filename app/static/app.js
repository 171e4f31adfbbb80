/* PixPort ISNet Tiny: the page at /. Vanilla JS, no dependencies.
 * Server data is only ever written with textContent / attributes, never innerHTML. */
(function () {
  "use strict";

  var body = document.body;
  var MAX_BYTES = parseInt(body.dataset.maxBytes, 10) || 8 * 1024 * 1024;
  var MAX_MB = body.dataset.maxMb || "8";
  var STATUS_URL = body.dataset.statusUrl || "/api/bg/status";
  var STATUS_EVERY_MS = 5000;
  var REQUEST_TIMEOUT_MS = 120000;

  function $(id) { return document.getElementById(id); }

  var form = $("try-form");
  var fileInput = $("file");
  var dropzone = $("dropzone");
  var fileInfo = $("file-info");
  var dropzoneTitle = dropzone.querySelector(".dz-title");
  var chooseLink = dropzone.querySelector(".link-like");
  var colorRow = $("color-row");
  var colorPicker = $("color-picker");
  var colorText = $("color-text");
  var colorHint = $("color-hint");
  var submit = $("submit");
  var submitLabel = submit.querySelector(".btn-label");
  var cancel = $("cancel");
  var busyText = $("busy-text");
  var errorBox = $("error");
  var errorTitle = $("error-title");
  var errorBody = $("error-body");
  var output = $("output");
  var beforeImg = $("before-img");
  var beforePlaceholder = $("before-placeholder");
  var afterFrame = $("after-frame");
  var resultImg = $("result-img");
  var afterPlaceholder = $("after-placeholder");
  var resultBar = $("result-bar");
  var resultMeta = $("result-meta");
  var download = $("download");
  var more = $("more-options");
  var formatDefault = $("opt-format-default");
  var cropBox = $("opt-crop");
  var cropMargin = $("opt-crop-margin");
  var bgImageRow = $("bg-image-row");
  var bgImage = $("opt-bg-image");
  var onlyMask = $("opt-only-mask");
  var apiKey = $("opt-api-key");

  var currentFile = null;
  var beforeUrl = null;
  var resultUrl = null;
  var controller = null;
  var timer = null;

  // ---------- helpers ----------
  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  function selectedOp() {
    return form.querySelector('input[name="op"]:checked');
  }

  /** The download name from Content-Disposition (RFC 6266: filename* wins over filename). */
  function filenameFrom(header, fallback) {
    if (!header) return fallback;
    var star = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(header);
    if (star) {
      try { return decodeURIComponent(star[2].trim().replace(/^"|"$/g, "")); } catch (e) { /* fall through */ }
    }
    var quoted = /filename\s*=\s*"((?:\\.|[^"\\])*)"/i.exec(header);
    if (quoted) return quoted[1].replace(/\\(.)/g, "$1");
    var plain = /filename\s*=\s*([^;\s]+)/i.exec(header);
    if (plain) return plain[1];
    return fallback;
  }

  function showError(title, message) {
    errorBox.classList.remove("warn");
    errorTitle.textContent = title;
    errorBody.textContent = message || "";
    errorBox.hidden = false;
  }

  function showWarning(title, message) {
    showError(title, message);
    errorBox.classList.add("warn");
  }

  function clearError() {
    errorBox.hidden = true;
    errorTitle.textContent = "";
    errorBody.textContent = "";
  }

  // ---------- colour ----------
  var HEX = /^#?([0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8})$/i;
  var NAMED = /^[a-z]+$/i;
  var probe = document.createElement("canvas").getContext("2d");

  /** "#rrggbb" for a CSS colour name the browser knows (the server uses the same CSS list), or null. */
  function namedColor(name) {
    if (!probe || !NAMED.test(name) || !(window.CSS && CSS.supports("color", name))) return null;
    probe.fillStyle = "#000000";
    probe.fillStyle = name;
    var value = String(probe.fillStyle);
    return /^#[0-9a-f]{6}$/i.test(value) ? value : null;
  }
  var TRIPLE = /^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$/;

  /** "#rrggbb" for a colour the API accepts, or null. Mirrors app/colors.py. */
  function parseColor(text) {
    var value = (text || "").trim();
    if (!value) return "#ffffff";
    var m = HEX.exec(value);
    if (m) {
      var d = m[1];
      if (d.length === 3) d = d[0] + d[0] + d[1] + d[1] + d[2] + d[2];
      return "#" + d.slice(0, 6).toLowerCase();
    }
    m = TRIPLE.exec(value);
    if (m) {
      var parts = [m[1], m[2], m[3]].map(Number);
      if (parts.every(function (p) { return p >= 0 && p <= 255; })) {
        return "#" + parts.map(function (p) { return (p < 16 ? "0" : "") + p.toString(16); }).join("");
      }
    }
    if (value.toLowerCase() !== "transparent") return namedColor(value);
    return null;
  }

  function checkColorText() {
    var hex = parseColor(colorText.value);
    if (hex) {
      colorPicker.value = hex;
      colorText.removeAttribute("aria-invalid");
      colorHint.classList.remove("invalid");
    } else {
      colorText.setAttribute("aria-invalid", "true");
      colorHint.classList.add("invalid");
    }
  }

  colorPicker.addEventListener("input", function () {
    colorText.value = colorPicker.value.toUpperCase();
    checkColorText();
  });
  colorText.addEventListener("input", checkColorText);

  // ---------- operation ----------
  function syncOp() {
    var op = selectedOp();
    var isColor = op && op.value === "change_color";
    colorRow.hidden = !isColor;
    bgImageRow.hidden = !isColor;
    bgImage.disabled = !isColor; // disabled controls are left out of the FormData
    onlyMask.disabled = isColor; // change_color refuses only_mask: it always returns a composed image
    colorText.disabled = !isColor || hasBgImage();
    colorPicker.disabled = colorText.disabled;
    formatDefault.textContent = isColor ? "Default (JPEG, or PNG for a translucent colour)" : "Default (PNG)";
    submitLabel.textContent = isColor ? "Change colour" : "Remove background";
  }

  function hasBgImage() {
    return !!(bgImage.files && bgImage.files.length);
  }

  // The API takes a colour or a background image, not both.
  bgImage.addEventListener("change", function () {
    syncOp();
    colorHint.textContent = hasBgImage()
      ? "The background image is used instead of a colour."
      : "#RRGGBB, #RGB, #RRGGBBAA, R,G,B (0-255 each) or a CSS name, e.g. #00FF00, 255,0,0 or teal";
  });
  cropBox.addEventListener("change", function () {
    cropMargin.disabled = !cropBox.checked;
  });

  form.querySelectorAll('input[name="op"]').forEach(function (radio) {
    radio.addEventListener("change", syncOp);
  });

  // ---------- file ----------
  function setFile(file) {
    clearError();
    currentFile = null;
    submit.disabled = true;
    if (!file) {
      fileInfo.hidden = true;
      dropzone.classList.remove("has-file");
      return;
    }
    fileInfo.textContent = "";
    var name = document.createElement("strong");
    name.textContent = file.name;
    var size = document.createElement("span");
    size.className = "size";
    size.textContent = " · " + formatBytes(file.size) + (file.type ? " · " + file.type : "");
    fileInfo.appendChild(name);
    fileInfo.appendChild(size);
    fileInfo.hidden = false;
    dropzone.classList.add("has-file");
    dropzoneTitle.textContent = "Drop another image or ";
    dropzoneTitle.appendChild(chooseLink);
    chooseLink.textContent = "choose a different file";

    if (file.size === 0) {
      showError("This file is empty", "Choose an image file with some content.");
      return;
    }
    if (file.size > MAX_BYTES) {
      showError("The image is too large",
        file.name + " is " + formatBytes(file.size) + "; the limit is " + MAX_MB + " MB. Send a smaller or more compressed image.");
      return;
    }
    currentFile = file;
    submit.disabled = false;

    if (beforeUrl) URL.revokeObjectURL(beforeUrl);
    beforeUrl = URL.createObjectURL(file);
    beforeImg.src = beforeUrl;
    beforeImg.alt = "Original: " + file.name;
    beforeImg.hidden = false;
    beforePlaceholder.hidden = true;
    beforeImg.onerror = function () {
      beforeImg.hidden = true;
      beforePlaceholder.hidden = false;
      beforePlaceholder.textContent = "No preview for this file in your browser";
    };
    resetResult();
  }

  fileInput.addEventListener("change", function () {
    setFile(fileInput.files && fileInput.files[0]);
  });

  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
      dropzone.classList.add("dragover");
    });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    dropzone.addEventListener(type, function () { dropzone.classList.remove("dragover"); });
  });
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropzone.classList.remove("dragover");
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    try { fileInput.files = files; } catch (e) { /* read-only in old browsers; currentFile is used anyway */ }
    setFile(files[0]);
  });
  // A file dropped next to the zone should not navigate away from the page.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });

  // ---------- result ----------
  function resetResult() {
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = null;
    resultImg.hidden = true;
    resultImg.removeAttribute("src");
    resultImg.alt = "";
    afterPlaceholder.hidden = false;
    afterPlaceholder.textContent = "The result appears here";
    resultBar.hidden = true;
    afterFrame.classList.add("checkerboard");
  }

  function showResult(blob, filename, seconds, op, colour) {
    resultUrl = URL.createObjectURL(blob);
    resultImg.onload = function () {
      resultImg.hidden = false;
      afterPlaceholder.hidden = true;
    };
    resultImg.onerror = function () {
      showError("The result could not be displayed", "The server answered with " + (blob.type || "unknown data") + ". Use the download link to inspect it.");
    };
    // Transparency only matters for formats that carry alpha; a JPEG sits on a plain frame.
    afterFrame.classList.toggle("checkerboard", !/jpe?g/i.test(blob.type));
    resultImg.src = resultUrl;
    resultImg.alt = /^mask_/.test(filename)
      ? "Mask of " + currentFile.name + ": white is the subject, black the background"
      : op === "change_color"
        ? currentFile.name + " with the background replaced by " + colour
        : currentFile.name + " with the background removed";
    resultImg.dataset.filename = filename;
    download.href = resultUrl;
    download.setAttribute("download", filename);
    download.textContent = "Download " + filename;
    resultMeta.textContent = formatBytes(blob.size) + " · " + (blob.type || "unknown type") + " · " + seconds.toFixed(1) + " s";
    resultBar.hidden = false;
  }

  // ---------- errors from the API ----------
  var TITLES = {
    400: "The request was not accepted",
    401: "An API key is needed",
    403: "Not authorised",
    413: "The image is too large",
    415: "This file type is not supported",
    422: "The image could not be read",
    429: "Too many requests",
    500: "The server hit an error",
    503: "The service is busy"
  };

  function describeFailure(response, text) {
    var message = null;
    try {
      var data = JSON.parse(text);
      if (data && typeof data.error === "string") message = data.error;
    } catch (e) { /* not JSON: a proxy or platform page */ }
    if (!message) {
      message = response.status >= 500
        ? "The server did not process the image (HTTP " + response.status + ")."
        : "HTTP " + response.status + " " + (response.statusText || "");
    }
    var title = TITLES[response.status] || "Request failed (HTTP " + response.status + ")";
    var retry = response.headers.get("Retry-After");
    if (response.status === 503 || retry) {
      var seconds = parseInt(retry, 10);
      if (!isNaN(seconds)) message += " Try again in " + seconds + " second" + (seconds === 1 ? "" : "s") + ".";
      else message += " Try again in a moment.";
      return { title: title, message: message, warn: true };
    }
    return { title: title, message: message, warn: false };
  }

  // ---------- submit ----------
  function setBusy(busy) {
    submit.classList.toggle("busy", busy);
    submit.disabled = busy || !currentFile;
    cancel.hidden = !busy;
    output.setAttribute("aria-busy", busy ? "true" : "false");
    afterFrame.classList.toggle("loading", busy);
    fileInput.disabled = busy;
    if (busy) {
      var started = performance.now();
      busyText.textContent = "Uploading…";
      timer = setInterval(function () {
        busyText.textContent = "Working… " + ((performance.now() - started) / 1000).toFixed(0) + " s";
      }, 500);
    } else {
      clearInterval(timer);
      timer = null;
      busyText.textContent = "";
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!currentFile || controller) return;
    clearError();
    var op = selectedOp();
    var data = new FormData(form);
    data.delete("op");
    data.set("file", currentFile, currentFile.name);
    // An empty optional file input would arrive as a file without a name: leave it out.
    Array.from(data.keys()).forEach(function (key) {
      var value = data.get(key);
      if (key !== "file" && value instanceof File && !value.name && !value.size) data.delete(key);
    });
    var headers = {};
    if (apiKey.value.trim()) headers["X-API-Key"] = apiKey.value.trim();
    var colour = hasBgImage() ? "the chosen background image" : (colorText.value.trim() || "#FFFFFF");

    resetResult();
    afterPlaceholder.textContent = op.value === "change_color" ? "Replacing the background…" : "Removing the background…";
    controller = new AbortController();
    var timedOut = false;
    var deadline = setTimeout(function () { timedOut = true; controller.abort(); }, REQUEST_TIMEOUT_MS);
    var started = performance.now();
    setBusy(true);

    fetch(op.dataset.endpoint, { method: "POST", body: data, headers: headers, signal: controller.signal, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          return response.text().then(function (text) {
            var failure = describeFailure(response, text);
            (failure.warn ? showWarning : showError)(failure.title, failure.message);
            afterPlaceholder.textContent = "No result";
            if (response.status === 401) {
              more.open = true;
              apiKey.focus();
            }
          });
        }
        var fallback = (op.value === "change_color" ? "colored_" : "nobg_") + currentFile.name.replace(/\.[^.]*$/, "") +
          "." + ((response.headers.get("Content-Type") || "").split("/")[1] || "png").replace("jpeg", "jpg").split(";")[0];
        var filename = filenameFrom(response.headers.get("Content-Disposition"), fallback);
        return response.blob().then(function (blob) {
          showResult(blob, filename, (performance.now() - started) / 1000, op.value, colour);
          refreshStatus();
        });
      })
      .catch(function (error) {
        afterPlaceholder.textContent = "No result";
        if (error && error.name === "AbortError") {
          if (timedOut) showError("The request timed out", "No answer after " + REQUEST_TIMEOUT_MS / 1000 + " s. The service may be overloaded; try again later.");
          else showWarning("Cancelled", "The request was cancelled.");
        } else {
          showError("Could not reach the server", "Check your connection and that the service is running, then try again.");
        }
      })
      .then(function () {
        clearTimeout(deadline);
        controller = null;
        setBusy(false);
      });
  });

  cancel.addEventListener("click", function () {
    if (controller) controller.abort();
  });

  // ---------- live status ----------
  var STATES = {
    not_loaded: ["Idle, loads on first use", "warn"],
    downloading: ["Downloading", "warn"],
    preparing: ["Building", "warn"],
    loading: ["Loading", "warn"],
    ready: ["Ready", "ok"],
    failed: ["Failed", "bad"]
  };

  function setText(id, main, small) {
    var el = $(id);
    el.textContent = main;
    if (small) {
      var s = document.createElement("small");
      s.textContent = small;
      el.appendChild(s);
    }
  }

  function setTone(el, tone, label) {
    if (el.dataset.tone !== tone) el.dataset.tone = tone;
    var target = el.querySelector(".pill-text") || el;
    if (target.textContent !== label) target.textContent = label;
  }

  function renderStatus(s) {
    var info = s.model_info || {};
    var state = info.state || "unknown";
    var known = STATES[state] || [state, "neutral"];
    setText("st-model", s.model || info.name || "unknown",
      info.input_size ? "input " + info.input_size + " px" : "");
    setTone($("st-state"), known[1], known[0]);
    setTone($("header-state"), known[1], known[0].toLowerCase());
    var pillModel = $("header-state").querySelector(".pill-model");
    var modelLabel = (s.model || "model") + ": ";
    if (pillModel && pillModel.textContent !== modelLabel) pillModel.textContent = modelLabel;

    var mem = s.memory || {};
    setText("st-memory", mem.rss_mb != null ? mem.rss_mb.toFixed(0) + " MB" : "n/a",
      mem.peak_rss_mb != null ? "peak " + mem.peak_rss_mb.toFixed(0) + " MB" : "");
    var inf = s.inference || {};
    setText("st-inferences", String(inf.count != null ? inf.count : "n/a"),
      inf.last_seconds != null ? "last " + Number(inf.last_seconds).toFixed(2) + " s" : "");
    var q = s.queue || {};
    setText("st-queue", (q.waiting != null ? q.waiting : 0) + " waiting",
      q.max_queue != null ? "max " + q.max_queue + (q.rejected_busy ? ", " + q.rejected_busy + " turned away" : "") : "");
    setText("st-source", info.source || "not loaded yet",
      info.load_seconds != null ? "loaded in " + Number(info.load_seconds).toFixed(1) + " s" : "");

    var reason = $("st-reason");
    if (state === "failed" && info.reason) {
      reason.textContent = "The model failed to load: " + info.reason;
      reason.hidden = false;
    } else {
      reason.hidden = true;
    }
    $("status-updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
  }

  function renderOffline(message) {
    setTone($("st-state"), "bad", "Unreachable");
    setTone($("header-state"), "bad", "service unreachable");
    var pillModel = $("header-state").querySelector(".pill-model");
    if (pillModel) pillModel.textContent = "";
    $("status-updated").textContent = message;
  }

  var statusTimer = null;
  function refreshStatus() {
    return fetch(STATUS_URL, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(renderStatus)
      .catch(function (error) {
        renderOffline("Could not load the status (" + (error && error.message ? error.message : "network error") + ").");
      });
  }

  function scheduleStatus() {
    clearInterval(statusTimer);
    statusTimer = setInterval(function () {
      if (!document.hidden) refreshStatus();
    }, STATUS_EVERY_MS);
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refreshStatus();
  });

  // ---------- API docs ----------
  document.querySelectorAll(".snippet .copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var code = button.parentNode.querySelector("code");
      var text = code.textContent;
      var done = function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(code); });
      } else {
        selectText(code);
        button.textContent = "Press Ctrl+C";
        setTimeout(function () { button.textContent = "Copy"; }, 2000);
      }
    });
  });

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Reveal the OpenAPI link only when the service publishes one.
  var openapi = $("openapi-link");
  if (openapi) {
    fetch(openapi.getAttribute("href"), { method: "GET", cache: "no-store" })
      .then(function (r) { if (r.ok) openapi.hidden = false; })
      .catch(function () { /* not available: keep hidden */ });
  }

  // ---------- start ----------
  if (apiKey.dataset.required) more.open = true;
  cropMargin.disabled = !cropBox.checked;
  syncOp();
  checkColorText();
  if (fileInput.files && fileInput.files[0]) setFile(fileInput.files[0]);
  refreshStatus();
  scheduleStatus();
})();
