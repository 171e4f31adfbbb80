/* PixPort ISNet Tiny: the page at /. Vanilla JS, no dependencies.
 * Server data is only ever written with textContent / attributes, never innerHTML.
 * Sizes and the split are set through element.style (CSSOM), which the page's CSP allows; no style attributes. */
(function () {
  "use strict";

  var body = document.body;
  var MAX_BYTES = parseInt(body.dataset.maxBytes, 10) || 8 * 1024 * 1024;
  var MAX_MB = body.dataset.maxMb || "8";
  var STATUS_URL = body.dataset.statusUrl || "/api/bg/status";
  var STATUS_EVERY_MS = 5000;
  var REQUEST_TIMEOUT_MS = 120000;
  var KEY_PLACEHOLDER = "$PIXPORT_API_KEY";

  function $(id) { return document.getElementById(id); }

  var form = $("try-form");
  var fileInput = $("file");
  var dropzone = $("dropzone");
  var fileInfo = $("file-info");
  var fileThumb = $("file-thumb");
  var fileText = $("file-text");
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
  var more = $("more-options");
  var formatSelect = $("opt-format");
  var formatDefault = $("opt-format-default");
  var maxDimension = $("opt-max-dimension");
  var cropBox = $("opt-crop");
  var cropMargin = $("opt-crop-margin");
  var onlyMask = $("opt-only-mask");
  var refineBox = $("opt-refine");
  var decontaminateBox = $("opt-decontaminate");
  var onlyMaskRow = $("only-mask-row");
  var bgImageRow = $("bg-image-row");
  var bgImage = $("opt-bg-image");
  var apiKey = $("opt-api-key");
  var subRemove = $("op-sub-remove");
  var subColor = $("op-sub-color");
  var curlNow = $("curl-now");

  var output = $("output");
  var viewerTitle = $("viewer-title");
  var viewerName = $("viewer-name");
  var viewerTools = $("viewer-tools");
  var bgSwitch = $("bg-switch");
  var bgColor = $("result-bg-color");
  var stageWrap = $("stage-wrap");
  var stage = $("stage");
  var canvas = $("canvas");
  var beforeImg = $("before-img");
  var afterLayer = $("after-layer");
  var resultImg = $("result-img");
  var divider = $("divider");
  var tagBefore = $("tag-before");
  var tagAfter = $("tag-after");
  var placeholder = $("placeholder");
  var compare = $("compare");
  var split = $("split");
  var compareNote = $("compare-note");
  var resultBar = $("result-bar");
  var resultMeta = $("result-meta");
  var openFull = $("open-full");
  var download = $("download");

  var currentFile = null; // the file the next request sends
  var pending = null;     // {url, width, height} preview of currentFile
  var shown = null;       // the last good result: {beforeUrl, resultUrl, width, height, comparable, ...}
  var controller = null;
  var timer = null;
  var zoom = 1;

  // ---------- helpers ----------
  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  function selectedOp() {
    return form.querySelector('input[name="op"]:checked');
  }

  function stemOf(name) {
    return (name || "image").replace(/\.[^.]*$/, "") || "image";
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

  // ---------- errors, each next to the control it is about ----------
  // box: the role="alert" element beside the control; control: what gets aria-invalid and focus.
  var FIELDS = {
    file: { box: $("file-error"), control: fileInput, mark: dropzone },
    color: { box: $("color-error"), control: colorText },
    format: { box: $("format-error"), control: formatSelect },
    max_dimension: { box: $("max-dimension-error"), control: maxDimension },
    crop_margin: { box: $("crop-margin-error"), control: cropMargin },
    bg_image: { box: $("bg-image-error"), control: bgImage },
    api_key: { box: $("api-key-error"), control: apiKey },
    submit: { box: $("submit-error"), control: null }
  };

  function clearErrors() {
    Object.keys(FIELDS).forEach(function (key) {
      var f = FIELDS[key];
      f.box.hidden = true;
      f.box.classList.remove("warn");
      if (key === "submit") {
        $("submit-error-title").textContent = "";
        $("submit-error-body").textContent = "";
      } else {
        f.box.textContent = "";
      }
      if (f.control) f.control.removeAttribute("aria-invalid");
      if (f.mark) f.mark.classList.remove("invalid");
    });
    colorText.removeAttribute("aria-invalid");
    checkColorText();
  }

  /** Show one error beside `key`'s control, open its section, bring it into view; focus the control if asked. */
  function showError(key, title, message, options) {
    var opts = options || {};
    clearErrors();
    var f = FIELDS[key] || FIELDS.submit;
    if (f === FIELDS.submit) {
      f.box.classList.toggle("warn", !!opts.warn);
      $("submit-error-title").textContent = title;
      $("submit-error-body").textContent = message || "";
    } else {
      var strong = document.createElement("strong");
      strong.textContent = title + ". ";
      f.box.appendChild(strong);
      f.box.appendChild(document.createTextNode(message || ""));
      f.box.classList.toggle("warn", !!opts.warn);
      if (f.control) f.control.setAttribute("aria-invalid", "true");
      if (f.mark) f.mark.classList.add("invalid");
    }
    var section = f.box.closest("details");
    if (section) section.open = true;
    f.box.hidden = false;
    if (opts.focus && f.control && !f.control.disabled && f.control !== fileInput) {
      f.control.focus({ preventScroll: true });
    }
    f.box.scrollIntoView({ block: "nearest" });
  }

  // ---------- colour ----------
  var HEX = /^#?([0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8})$/i;
  var NAMED = /^[a-z]+$/i;
  var TRIPLE = /^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$/;
  var probe = document.createElement("canvas").getContext("2d");

  /** "#rrggbb" for a CSS colour name the browser knows (the server uses the same CSS list), or null. */
  function namedColor(name) {
    if (!probe || !NAMED.test(name) || !(window.CSS && CSS.supports("color", name))) return null;
    probe.fillStyle = "#000000";
    probe.fillStyle = name;
    var value = String(probe.fillStyle);
    return /^#[0-9a-f]{6}$/i.test(value) ? value : null;
  }

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

  /** True for #RRGGBBAA with alpha below ff: the server then answers PNG, not JPEG. */
  function translucent(text) {
    var m = HEX.exec((text || "").trim());
    return !!(m && m[1].length === 8 && m[1].slice(6).toLowerCase() !== "ff");
  }

  /** The colour field only goes out when it differs from the API's default, white. */
  function colorToSend() {
    var value = colorText.value.trim();
    if (!value) return null;
    if (parseColor(value) === "#ffffff" && !translucent(value)) return null;
    return value;
  }

  function checkColorText() {
    var hex = parseColor(colorText.value);
    if (hex) {
      colorPicker.value = hex;
      colorHint.classList.remove("invalid");
    } else {
      colorHint.classList.add("invalid");
    }
    if (!hex) colorText.setAttribute("aria-invalid", "true");
    else if (FIELDS.color.box.hidden) colorText.removeAttribute("aria-invalid");
  }

  colorPicker.addEventListener("input", function () {
    colorText.value = colorPicker.value.toUpperCase();
    checkColorText();
    syncLabels();
  });
  colorText.addEventListener("input", function () {
    checkColorText();
    syncLabels();
  });

  // ---------- the request: only the fields each endpoint accepts, and only when set ----------
  function hasBgImage() {
    return !!(bgImage.files && bgImage.files.length);
  }

  function outputFormat(op) {
    if (formatSelect.value) return formatSelect.value;
    if (op === "remove" || onlyMaskOn(op)) return "png";
    return hasBgImage() || !translucent(colorText.value) ? "jpeg" : "png";
  }

  function onlyMaskOn(op) {
    return op === "remove" && onlyMask.checked;
  }

  /** [name, value] pairs for the form besides `file`; a File value stays a File. */
  function requestFields(op) {
    var fields = [];
    if (op === "change_color") {
      if (hasBgImage()) fields.push(["bg_image", bgImage.files[0]]);
      else if (colorToSend() !== null) fields.push(["color", colorToSend()]);
    }
    if (formatSelect.value) fields.push(["format", formatSelect.value]);
    if (onlyMaskOn(op)) fields.push(["only_mask", "true"]);
    if (cropBox.checked) {
      fields.push(["crop", "true"]);
      if (cropMargin.value.trim()) fields.push(["crop_margin", cropMargin.value.trim()]);
    }
    if (maxDimension.value.trim()) fields.push(["max_dimension", maxDimension.value.trim()]);
    // both are on unless sent, so only a box changed from its default is sent
    if (!refineBox.checked) fields.push(["refine", "false"]);
    if (!decontaminateBox.checked && !onlyMaskOn(op)) fields.push(["decontaminate", "false"]);
    return fields;
  }

  function expectedName(op, fileName) {
    var fmt = outputFormat(op);
    var ext = fmt === "jpeg" ? "jpg" : fmt;
    var prefix = onlyMaskOn(op) ? "mask_" : op === "change_color" ? "colored_" : "nobg_";
    return prefix + stemOf(fileName) + "." + ext;
  }

  function shellQuote(text) {
    return /^[\w@%+=:,.\/#-]+$/.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function keyNeeded() {
    return !!apiKey.dataset.required || !!apiKey.value.trim();
  }

  /** The same request as a curl command; the key is always the placeholder, never the typed value. */
  function curlCommand() {
    var op = selectedOp();
    var name = currentFile ? currentFile.name : "photo.jpg";
    var parts = ["curl"];
    if (keyNeeded()) parts.push('-H "X-API-Key: ' + KEY_PLACEHOLDER + '"');
    parts.push("-F " + shellQuote("file=@" + name));
    requestFields(op.value).forEach(function (field) {
      var value = field[1] instanceof File ? "@" + field[1].name : field[1];
      parts.push("-F " + shellQuote(field[0] + "=" + value));
    });
    parts.push(window.location.origin + op.dataset.endpoint);
    parts.push("-o " + shellQuote(expectedName(op.value, name)));
    return parts.join(" ");
  }

  // ---------- labels follow the options ----------
  var FORMAT_NAMES = { png: "PNG", webp: "WebP", jpeg: "JPEG" };

  function syncLabels() {
    var op = selectedOp().value;
    var isColor = op === "change_color";
    colorRow.hidden = !isColor;
    bgImageRow.hidden = !isColor;
    bgImage.disabled = !isColor;
    onlyMaskRow.hidden = isColor; // /change_color does not take only_mask
    colorText.disabled = !isColor || hasBgImage();
    colorPicker.disabled = colorText.disabled;
    cropMargin.disabled = !cropBox.checked;
    decontaminateBox.disabled = onlyMaskOn(op); // the mask alone carries no colours

    var removeFmt = FORMAT_NAMES[outputFormat("remove")];
    if (onlyMask.checked) subRemove.textContent = "Mask only, " + removeFmt;
    else if (outputFormat("remove") === "jpeg") subRemove.textContent = "On white, JPEG (no transparency)";
    else subRemove.textContent = "Transparent " + removeFmt;
    subColor.textContent = (hasBgImage() ? "Your background image, " : "Solid colour, ") + FORMAT_NAMES[outputFormat("change_color")];

    formatDefault.textContent = isColor
      ? "Default (JPEG; PNG for a translucent colour)"
      : "Default (PNG)";
    submitLabel.textContent = isColor ? "Change background" : onlyMaskOn(op) ? "Get the mask" : "Remove background";
    curlNow.textContent = curlCommand();
  }

  bgImage.addEventListener("change", function () {
    colorHint.textContent = hasBgImage()
      ? "The background image is used instead of a colour."
      : "#RRGGBB, #RGB, #RRGGBBAA, R,G,B (0-255 each) or a CSS name, e.g. #00FF00, 255,0,0 or teal";
    syncLabels();
  });
  [cropBox, onlyMask, formatSelect, refineBox, decontaminateBox].forEach(function (el) {
    el.addEventListener("change", syncLabels);
  });
  [cropMargin, maxDimension, apiKey].forEach(function (el) { el.addEventListener("input", syncLabels); });
  form.querySelectorAll('input[name="op"]').forEach(function (radio) {
    radio.addEventListener("change", syncLabels);
  });

  // ---------- file ----------
  function setFile(file) {
    clearErrors();
    currentFile = null;
    submit.disabled = true;
    if (!file) {
      fileInfo.hidden = true;
      dropzone.classList.remove("has-file");
      syncLabels();
      return;
    }
    fileText.textContent = "";
    var name = document.createElement("strong");
    name.textContent = file.name;
    var size = document.createElement("span");
    size.className = "size";
    size.textContent = " · " + formatBytes(file.size) + (file.type ? " · " + file.type : "");
    fileText.appendChild(name);
    fileText.appendChild(size);
    fileInfo.hidden = false;
    fileThumb.hidden = true;
    dropzone.classList.add("has-file");
    dropzoneTitle.textContent = "Drop another image or ";
    dropzoneTitle.appendChild(chooseLink);
    chooseLink.textContent = "choose a different file";

    if (file.size === 0) {
      showError("file", "This file is empty", "Choose an image file with some content.");
      syncLabels();
      return;
    }
    if (file.size > MAX_BYTES) {
      showError("file", "The image is too large",
        file.name + " is " + formatBytes(file.size) + "; the limit is " + MAX_MB + " MB. Send a smaller or more compressed image.");
      syncLabels();
      return;
    }
    currentFile = file;
    submit.disabled = !!controller;
    if (pending && (!shown || shown.beforeUrl !== pending.url)) URL.revokeObjectURL(pending.url);
    var preview = { url: URL.createObjectURL(file), width: 0, height: 0, name: file.name };
    pending = preview;
    var probeImg = new Image();
    probeImg.onload = function () {
      preview.width = probeImg.naturalWidth;
      preview.height = probeImg.naturalHeight;
      if (pending === preview) {
        fileThumb.src = preview.url;
        fileThumb.hidden = false;
        if (!shown) render();
      }
    };
    probeImg.onerror = function () {
      if (pending === preview && !shown) {
        render();
        placeholder.textContent = "No preview for this file in your browser; the server may still read it";
      }
    };
    probeImg.src = preview.url;
    syncLabels();
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
    if (!files || !files.length || controller) return; // the file in flight stays the one shown
    try { fileInput.files = files; } catch (e) { /* read-only in old browsers; currentFile is used anyway */ }
    setFile(files[0]);
  });
  // A file dropped next to the zone should not navigate away from the page.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });

  // ---------- the viewer ----------
  /** The picture's size on screen at "fit": as wide as the column, at most ~70 % of the window high. */
  function fitSize(width, height) {
    var available = output.clientWidth - stageBorder();
    var maxHeight = Math.max(220, window.innerHeight * 0.7);
    var w = Math.min(available, maxHeight * width / height);
    return { width: Math.max(1, Math.floor(w)), height: Math.max(1, Math.round(w * height / width)) };
  }

  function stageBorder() {
    var style = getComputedStyle(stage);
    return (parseFloat(style.borderLeftWidth) || 0) + (parseFloat(style.borderRightWidth) || 0);
  }

  function layout() {
    var source = shown ? shown : (pending && pending.width ? pending : null);
    if (!source) {
      stage.classList.remove("sized", "zoomed");
      stageWrap.style.width = "";
      stage.style.height = "";
      canvas.style.width = "";
      canvas.style.height = "";
      return;
    }
    var fit = fitSize(source.width, source.height);
    var level = shown ? zoom : 1;
    var before = { x: 0.5, y: 0.5 };
    if (stage.scrollWidth > stage.clientWidth || stage.scrollHeight > stage.clientHeight) {
      before.x = (stage.scrollLeft + stage.clientWidth / 2) / stage.scrollWidth;
      before.y = (stage.scrollTop + stage.clientHeight / 2) / stage.scrollHeight;
    }
    stage.classList.add("sized");
    stage.classList.toggle("zoomed", level > 1);
    var border = stageBorder();
    stageWrap.style.width = (fit.width + border) + "px";
    stage.style.height = (fit.height + border) + "px";
    canvas.style.width = fit.width * level + "px";
    canvas.style.height = fit.height * level + "px";
    stage.scrollLeft = before.x * stage.scrollWidth - stage.clientWidth / 2;
    stage.scrollTop = before.y * stage.scrollHeight - stage.clientHeight / 2;
  }

  function setSplit(value) {
    var v = Math.max(0, Math.min(100, Math.round(value)));
    split.value = String(v);
    split.setAttribute("aria-valuetext", v + " % before, " + (100 - v) + " % after");
    canvas.style.setProperty("--split", v + "%");
  }

  /** Draw the viewer from `shown` (the last good result) or, before any result, the chosen file. */
  function render() {
    var comparing = !!(shown && shown.comparable);
    placeholder.hidden = !!(shown || (pending && pending.width));
    if (!shown && !pending) placeholder.textContent = "Your image appears here";
    canvas.hidden = placeholder.hidden === false;
    afterLayer.hidden = !shown;
    viewerTools.hidden = !shown;
    resultBar.hidden = !shown;
    compare.hidden = !comparing;
    divider.hidden = !comparing;
    tagBefore.hidden = !comparing;
    tagAfter.hidden = !shown;
    stage.classList.toggle("comparing", comparing);
    compareNote.hidden = !(shown && !shown.comparable);

    if (shown) {
      beforeImg.hidden = !comparing;
      if (comparing) {
        beforeImg.src = shown.beforeUrl;
        beforeImg.alt = "Original: " + shown.sourceName;
      }
      resultImg.src = shown.resultUrl;
      resultImg.alt = shown.alt;
      resultImg.dataset.filename = shown.filename;
      tagAfter.textContent = shown.mask ? "Mask" : "After";
      bgSwitch.hidden = !shown.alpha;
      viewerTitle.textContent = "Result";
      viewerName.textContent = shown.filename;
      compareNote.textContent = "The result is cropped, so it is shown alone; the before/after slider needs the same framing.";
      download.href = shown.resultUrl;
      download.setAttribute("download", shown.filename);
      download.textContent = "Download " + shown.filename;
      openFull.href = shown.resultUrl;
      resultMeta.textContent = shown.width + "×" + shown.height + " px · " + formatBytes(shown.size) + " · " +
        (shown.type || "unknown type") + " · " + shown.seconds.toFixed(1) + " s";
    } else if (pending && pending.width) {
      beforeImg.hidden = false;
      beforeImg.src = pending.url;
      beforeImg.alt = "Original: " + pending.name;
      viewerTitle.textContent = "Preview";
      viewerName.textContent = pending.name;
    } else {
      beforeImg.hidden = true;
      viewerTitle.textContent = "Preview";
      viewerName.textContent = "";
    }
    layout();
  }

  /** A new result replaces the old one only once it has loaded: a failure never wipes a good result. */
  function acceptResult(blob, filename, seconds, op, colour, source, file) {
    var url = URL.createObjectURL(blob);
    var img = new Image();
    img.onload = function () {
      var mask = /^mask_/.test(filename);
      var comparable = !!source.width &&
        Math.abs(img.naturalWidth / img.naturalHeight - source.width / source.height) < 0.02 * source.width / source.height;
      if (shown) {
        URL.revokeObjectURL(shown.resultUrl);
        if (shown.beforeUrl !== source.url && shown.beforeUrl !== (pending && pending.url)) URL.revokeObjectURL(shown.beforeUrl);
      }
      shown = {
        beforeUrl: source.url,
        resultUrl: url,
        width: img.naturalWidth,
        height: img.naturalHeight,
        comparable: comparable,
        sourceName: file.name,
        filename: filename,
        size: blob.size,
        type: blob.type,
        seconds: seconds,
        mask: mask,
        alpha: !mask && !/jpe?g/i.test(blob.type),
        alt: mask
          ? "Mask of " + file.name + ": white is the subject, black the background"
          : op === "change_color"
            ? file.name + " with the background replaced by " + colour
            : file.name + " with the background removed"
      };
      zoom = 1; // a new picture starts whole
      form.querySelector('input[name="zoom"][value="1"]').checked = true;
      render();
      busyText.textContent = "Done: " + filename + ", " + formatBytes(blob.size) + ".";
      // Bring the whole new result into view (on a phone the viewer sits under the form).
      var box = stageWrap.getBoundingClientRect();
      if (box.bottom > window.innerHeight || box.top < 0) output.scrollIntoView({ block: "start" });
    };
    img.onerror = function () {
      URL.revokeObjectURL(url);
      showError("submit", "The result could not be displayed",
        "The server answered with " + (blob.type || "unknown data") + ", which this browser cannot show.");
    };
    img.src = url;
  }

  split.addEventListener("input", function () { setSplit(Number(split.value)); });

  form.querySelectorAll('input[name="result-bg"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      afterLayer.classList.remove("bg-checker", "bg-white", "bg-black", "bg-custom");
      afterLayer.classList.add("bg-" + radio.value);
    });
  });
  bgColor.addEventListener("input", function () {
    afterLayer.style.setProperty("--custom-bg", bgColor.value);
    var custom = form.querySelector('input[name="result-bg"][value="custom"]');
    if (!custom.checked) {
      custom.checked = true;
      custom.dispatchEvent(new Event("change"));
    }
  });
  afterLayer.style.setProperty("--custom-bg", bgColor.value);

  form.querySelectorAll('input[name="zoom"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      zoom = Number(radio.value) || 1;
      layout();
    });
  });

  // Pointer on the picture: at "fit" it moves the split; zoomed in, a mouse drag pans (touch scrolls natively).
  var drag = null;
  stage.addEventListener("pointerdown", function (event) {
    if (!shown || event.button !== 0) return;
    if (zoom > 1) {
      if (event.pointerType !== "mouse") return;
      drag = { pan: true, x: event.clientX, y: event.clientY, left: stage.scrollLeft, top: stage.scrollTop };
      stage.classList.add("panning");
    } else if (shown.comparable) {
      drag = { pan: false };
      moveSplitTo(event.clientX);
    } else {
      return;
    }
    stage.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  stage.addEventListener("pointermove", function (event) {
    if (!drag) return;
    if (drag.pan) {
      stage.scrollLeft = drag.left - (event.clientX - drag.x);
      stage.scrollTop = drag.top - (event.clientY - drag.y);
    } else {
      moveSplitTo(event.clientX);
    }
  });
  ["pointerup", "pointercancel"].forEach(function (type) {
    stage.addEventListener(type, function () {
      drag = null;
      stage.classList.remove("panning");
    });
  });

  function moveSplitTo(clientX) {
    var box = canvas.getBoundingClientRect();
    if (box.width > 0) setSplit((clientX - box.left) / box.width * 100);
  }

  var lastWidth = 0;
  function onResize() {
    if (output.clientWidth !== lastWidth) {
      lastWidth = output.clientWidth;
      layout();
    }
  }
  if (window.ResizeObserver) new ResizeObserver(onResize).observe(output);
  window.addEventListener("resize", function () { lastWidth = 0; onResize(); });

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

  /** Which control a failed request is about, from its status and the API's message. */
  function fieldFor(status, message) {
    if (status === 401 || status === 403) return "api_key";
    if (status === 413 || status === 415 || status === 422) return /bg_image|background image/i.test(message) ? "bg_image" : "file";
    if (status !== 400) return "submit";
    var rules = [
      [/crop_margin/i, "crop_margin"],
      [/max_dimension/i, "max_dimension"],
      [/bg_image/i, hasBgImage() ? "bg_image" : "color"],
      [/colou?r|alpha/i, "color"],
      [/\bformat\b/i, "format"],
      [/'file'|\bfile\b/i, "file"]
    ];
    for (var i = 0; i < rules.length; i++) {
      if (rules[i][0].test(message)) return rules[i][1];
    }
    return "submit";
  }

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
    var warn = false;
    if (response.status === 503 || retry) {
      var seconds = parseInt(retry, 10);
      if (!isNaN(seconds)) message += " Try again in " + seconds + " second" + (seconds === 1 ? "" : "s") + ".";
      else message += " Try again in a moment.";
      warn = true;
    }
    if (!/[.!?]$/.test(message.trim())) message = message.trim() + ".";
    if (shown) message += " The last result is still shown.";
    return { field: fieldFor(response.status, message), title: title, message: message, warn: warn };
  }

  // ---------- submit ----------
  function setBusy(busy) {
    submit.classList.toggle("busy", busy);
    submit.disabled = busy || !currentFile;
    cancel.hidden = !busy;
    output.setAttribute("aria-busy", busy ? "true" : "false");
    stageWrap.classList.toggle("loading", busy);
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
      if (/^(Uploading|Working)/.test(busyText.textContent)) busyText.textContent = "";
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!currentFile || controller) return;
    clearErrors();
    var op = selectedOp();
    var data = new FormData();
    data.append("file", currentFile, currentFile.name);
    requestFields(op.value).forEach(function (field) {
      if (field[1] instanceof File) data.append(field[0], field[1], field[1].name);
      else data.append(field[0], field[1]);
    });
    var headers = {};
    if (apiKey.value.trim()) headers["X-API-Key"] = apiKey.value.trim();
    var colour = hasBgImage() ? "the chosen background image" : (colorText.value.trim() || "#FFFFFF");
    var fallback = expectedName(op.value, currentFile.name);
    var source = pending;
    var file = currentFile;

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
            showError(failure.field, failure.title, failure.message, { warn: failure.warn, focus: true });
          });
        }
        var filename = filenameFrom(response.headers.get("Content-Disposition"), fallback);
        return response.blob().then(function (blob) {
          acceptResult(blob, filename, (performance.now() - started) / 1000, op.value, colour, source, file);
          refreshStatus();
        });
      })
      .catch(function (error) {
        var kept = shown ? " The last result is still shown." : "";
        if (error && error.name === "AbortError") {
          if (timedOut) showError("submit", "The request timed out", "No answer after " + REQUEST_TIMEOUT_MS / 1000 + " s. The service may be overloaded; try again later." + kept);
          else showError("submit", "Cancelled", "The request was cancelled." + kept, { warn: true });
        } else {
          showError("submit", "Could not reach the server", "Check your connection and that the service is running, then try again." + kept);
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

  // ---------- start ----------
  if (apiKey.dataset.required) more.open = true;
  checkColorText();
  syncLabels();
  setSplit(Number(split.value));
  if (fileInput.files && fileInput.files[0]) setFile(fileInput.files[0]);
  refreshStatus();
  scheduleStatus();
})();
