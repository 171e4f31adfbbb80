// The npm remove.bg client (Eddy Verbruggen's `remove.bg`, unmodified) against this service.
//
//   NODE_PATH=/tmp/js-client/node_modules node bench/removebg_js_client.js http://127.0.0.1:8300 PHOTO OUTDIR [IMAGE_URL]
//
// Its endpoint is a constant inside the package, so the switch is one line before using it: point the
// unirest.post it calls at this server (below). Prints one JSON line per call; exits 1 if any call failed.
const fs = require("fs");
const path = require("path");
const unirest = require("unirest");

const [base, photo, outDir, imageUrl] = process.argv.slice(2);
const post = unirest.post; unirest.post = (url, ...rest) => post(url.replace("https://api.remove.bg", base), ...rest);
const removeBg = require("remove.bg");

const apiKey = process.env.REMOVEBG_API_KEY || "any-key";
fs.mkdirSync(outDir, { recursive: true });
const out = (name) => path.join(outDir, name);
const calls = [
  ["file", () => removeBg.removeBackgroundFromImageFile({ path: photo, apiKey, size: "regular", outputFile: out("file.png") })],
  ["base64", () => removeBg.removeBackgroundFromImageBase64({ base64img: fs.readFileSync(photo).toString("base64"), apiKey, outputFile: out("base64.png") })],
  ["file, crop and scale", () => removeBg.removeBackgroundFromImageFile({ path: photo, apiKey, size: "full", crop: true, scale: "50%", position: "center", outputFile: out("crop-scale.png") })],
  ["base64, bg_color", () => removeBg.removeBackgroundFromImageBase64({ base64img: fs.readFileSync(photo).toString("base64"), apiKey, bg_color: "81d4fa", outputFile: out("bg-color.jpg") })],
  ["base64, add_shadow", () => removeBg.removeBackgroundFromImageBase64({ base64img: fs.readFileSync(photo).toString("base64"), apiKey, add_shadow: true, outputFile: out("shadow.png") })],
];
if (imageUrl) {
  calls.push(["url", () => removeBg.removeBackgroundFromImageUrl({ url: imageUrl, apiKey, size: "medium", type: "auto", outputFile: out("url.png") })]);
}

(async () => {
  let failed = 0;
  for (const [name, call] of calls) {
    try {
      const result = await call();
      const { base64img, ...rest } = result;
      console.log(JSON.stringify({ call: name, ok: true, bytes: Buffer.from(base64img, "base64").length, ...rest }));
    } catch (errors) {
      const expected = name.includes("add_shadow");  // refused on purpose: 400 unsupported_add_shadow
      if (!expected) failed += 1;
      console.log(JSON.stringify({ call: name, ok: false, expected, errors }));
    }
  }
  process.exit(failed ? 1 : 0);
})();
